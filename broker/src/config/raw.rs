//! The serde shape of `broker.toml` and the validation pass that turns it into [`BrokerConfig`].
//!
//! Values that need a field-specific message (durations, algorithms, addresses) are kept as
//! strings by serde and checked here; the shape itself is strict (`deny_unknown_fields`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hsm_config::{Inventory, is_valid_jurisdiction};
use serde::Deserialize;

mod attestation;
#[cfg(test)]
mod docs_tests;
mod http;
mod identity;
mod log;
mod mtls;
mod replica;
mod store;
mod xks;

use attestation::{RawAttestation, attestation};
use http::{RawHttp, http};
use identity::{RawIdentity, identity};
use log::{RawLog, log};
pub(crate) use mtls::is_trust_domain;
use store::{RawStore, store};

use super::{
    AuditConfig, BrokerConfig, ConfigError, IdentityConfig, KeysConfig, PolicyConfig,
    ResidencyConfig, ServerConfig, StoreConfig,
};

const MIN_TTL: Duration = Duration::from_secs(1);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_ROTATE_AFTER_WRAPS: u64 = 1 << 32;
const DAY: Duration = Duration::from_secs(86_400);
const DEFAULT_DESTRUCTION_WAIT: Duration = Duration::from_secs(7 * 86_400);
const MAX_DESTRUCTION_WAIT: Duration = Duration::from_secs(365 * 86_400);
/// The only HSM provider on which `allow_short_destruction_wait` is accepted.
const SHORT_WAIT_PROVIDER: &str = "SoftHSM2";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hsm_inventory: PathBuf,
    server: RawServer,
    store: RawStore,
    #[serde(default)]
    residency: RawResidency,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    policy: RawPolicy,
    http: Option<RawHttp>,
    #[serde(default)]
    log: RawLog,
    attestation: Option<RawAttestation>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "default_audit_dir")]
    dir: PathBuf,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            dir: default_audit_dir(),
        }
    }
}

fn default_audit_dir() -> PathBuf {
    PathBuf::from("audit")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    replica_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResidency {
    #[serde(default = "default_jurisdictions")]
    allowed_jurisdictions: Vec<String>,
    #[serde(default)]
    require_caller_region: bool,
    #[serde(default)]
    allowed_regions: Vec<String>,
}

impl Default for RawResidency {
    fn default() -> Self {
        Self {
            allowed_jurisdictions: default_jurisdictions(),
            require_caller_region: false,
            allowed_regions: Vec::new(),
        }
    }
}

fn default_jurisdictions() -> Vec<String> {
    vec!["EU".to_owned()]
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    default_lease_ttl: Option<String>,
    max_lease_ttl: Option<String>,
    rotate_after_wraps: Option<i64>,
    default_destruction_wait: Option<String>,
    min_destruction_wait: Option<String>,
    #[serde(default)]
    allow_short_destruction_wait: bool,
}

/// Everything but the inventory, validated.
pub(super) struct Validated {
    config_path: PathBuf,
    display_path: PathBuf,
    pub(super) hsm_inventory: PathBuf,
    server: ServerConfig,
    store: StoreConfig,
    residency: ResidencyConfig,
    keys: KeysConfig,
    identity: IdentityConfig,
    audit: AuditConfig,
    policy: PolicyConfig,
    http: Option<super::HttpConfig>,
    log: super::LogConfig,
    attestation: Option<super::AttestationConfig>,
}

struct Ctx<'a> {
    path: &'a Path,
    base: PathBuf,
}

impl Ctx<'_> {
    fn invalid(&self, field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn resolve(&self, field: &str, p: PathBuf) -> Result<PathBuf, ConfigError> {
        if p.as_os_str().is_empty() {
            return Err(self.invalid(field, "must not be empty"));
        }
        Ok(if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        })
    }

    fn duration(
        &self,
        field: &str,
        value: Option<String>,
        default: Duration,
        range: (Duration, Duration),
    ) -> Result<Duration, ConfigError> {
        let Some(text) = value else {
            return Ok(default);
        };
        let d = humantime::parse_duration(&text).map_err(|e| {
            self.invalid(
                field,
                format!("{text:?} is not a duration ({e}); write e.g. \"30s\", \"15m\", \"1h\""),
            )
        })?;
        if d < range.0 || d > range.1 {
            return Err(self.invalid(
                field,
                format!(
                    "{} is out of range {}..={}",
                    fmt_d(d),
                    fmt_d(range.0),
                    fmt_d(range.1)
                ),
            ));
        }
        Ok(d)
    }
}

pub(super) fn fmt_d(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

impl Validated {
    pub(super) fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message: e.message().trim_end().to_owned(),
            }
        })?;
        let config_path = std::path::absolute(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = config_path
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let cx = Ctx { path, base };
        let validated = Self {
            hsm_inventory: cx.resolve("hsm_inventory", raw.hsm_inventory)?,
            server: server(&cx, raw.server)?,
            store: store(&cx, raw.store)?,
            residency: residency(&cx, raw.residency)?,
            keys: keys(&cx, raw.keys)?,
            identity: identity(&cx, raw.identity)?,
            audit: AuditConfig {
                dir: cx.resolve("audit.dir", raw.audit.dir)?,
            },
            policy: PolicyConfig {
                file: raw
                    .policy
                    .file
                    .map(|f| cx.resolve("policy.file", f))
                    .transpose()?,
            },
            http: http(&cx, raw.http)?,
            log: log(&cx, raw.log)?,
            attestation: raw.attestation.map(|a| attestation(&cx, a)).transpose()?,
            display_path: path.to_path_buf(),
            config_path,
        };
        if let Some(t) = validated.http.as_ref().and_then(|h| h.transit.as_ref())
            && t.auth.needs_certificate()
            && validated.identity.mtls.is_none()
        {
            return Err(cx.invalid(
                "http.transit.auth",
                "client certificates are checked against [identity.mtls] (client_ca_file, \
                 trust_domains): set identity.mode = \"mtls\" or \"both\" and configure it",
            ));
        }
        Ok(validated)
    }

    pub(super) fn finish(self, inventory: Inventory) -> Result<BrokerConfig, ConfigError> {
        let allowed = &self.residency.allowed_jurisdictions;
        if !inventory
            .hsms
            .iter()
            .any(|h| allowed.contains(&h.jurisdiction))
        {
            let present: BTreeSet<&str> = inventory
                .hsms
                .iter()
                .map(|h| h.jurisdiction.as_str())
                .collect();
            return Err(ConfigError::Invalid {
                path: self.display_path,
                field: "residency.allowed_jurisdictions".to_owned(),
                problem: format!(
                    "no HSM in {} is in an allowed jurisdiction (allowed: {}; inventory has: {})",
                    self.hsm_inventory.display(),
                    join(allowed.iter().map(String::as_str)),
                    join(present.into_iter()),
                ),
            });
        }
        if self.keys.allow_short_destruction_wait
            && let Some(h) = inventory
                .hsms
                .iter()
                .find(|h| h.provider != SHORT_WAIT_PROVIDER)
        {
            return Err(ConfigError::Invalid {
                path: self.display_path,
                field: "keys.allow_short_destruction_wait".to_owned(),
                problem: format!(
                    "only for test and dev inventories where every HSM is {SHORT_WAIT_PROVIDER}; \
                     HSM {} is {:?}",
                    h.id, h.provider
                ),
            });
        }
        Ok(BrokerConfig {
            path: self.config_path,
            hsm_inventory: self.hsm_inventory,
            inventory,
            server: self.server,
            store: self.store,
            residency: self.residency,
            keys: self.keys,
            identity: self.identity,
            audit: self.audit,
            policy: self.policy,
            http: self.http,
            log: self.log,
            attestation: self.attestation,
        })
    }
}

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

fn server(cx: &Ctx<'_>, raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let listen: SocketAddr = raw.listen.parse().map_err(|_| {
        cx.invalid(
            "server.listen",
            format!(
                "{:?} is not an IP address and port, e.g. \"127.0.0.1:7443\"",
                raw.listen
            ),
        )
    })?;
    let replica_id = match raw.replica_id {
        Some(id) => {
            Some(replica::check(&id).map_err(|problem| cx.invalid("server.replica_id", problem))?)
        }
        None => None,
    };
    Ok(ServerConfig {
        listen,
        tls_cert: cx.resolve("server.tls_cert", raw.tls_cert)?,
        tls_key: cx.resolve("server.tls_key", raw.tls_key)?,
        replica_id,
    })
}

fn residency(cx: &Ctx<'_>, raw: RawResidency) -> Result<ResidencyConfig, ConfigError> {
    const FIELD: &str = "residency.allowed_jurisdictions";
    if raw.allowed_jurisdictions.is_empty() {
        return Err(cx.invalid(FIELD, "must list at least one jurisdiction, e.g. [\"EU\"]"));
    }
    for (i, code) in raw.allowed_jurisdictions.iter().enumerate() {
        if !is_valid_jurisdiction(code) {
            return Err(cx.invalid(
                format!("{FIELD}[{i}]"),
                format!("{code:?} is not a jurisdiction code: expected upper case like EU, CH, US"),
            ));
        }
    }
    const REGIONS: &str = "residency.allowed_regions";
    for (i, p) in raw.allowed_regions.iter().enumerate() {
        let stem = p.strip_suffix('*').unwrap_or(p);
        if stem.is_empty()
            || !stem
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(cx.invalid(
                format!("{REGIONS}[{i}]"),
                format!("{p:?} is not a region pattern: expected e.g. \"eu-west-1\" or \"eu-*\""),
            ));
        }
    }
    if raw.require_caller_region && raw.allowed_regions.is_empty() {
        return Err(cx.invalid(
            REGIONS,
            "must list at least one pattern when require_caller_region = true",
        ));
    }
    Ok(ResidencyConfig {
        allowed_jurisdictions: raw.allowed_jurisdictions.into_iter().collect(),
        require_caller_region: raw.require_caller_region,
        allowed_regions: raw.allowed_regions,
    })
}

fn keys(cx: &Ctx<'_>, raw: RawKeys) -> Result<KeysConfig, ConfigError> {
    let default_lease_ttl = cx.duration(
        "keys.default_lease_ttl",
        raw.default_lease_ttl,
        Duration::from_secs(15 * 60),
        (MIN_TTL, MAX_TTL),
    )?;
    let max_lease_ttl = cx.duration(
        "keys.max_lease_ttl",
        raw.max_lease_ttl,
        Duration::from_secs(3600),
        (MIN_TTL, MAX_TTL),
    )?;
    if max_lease_ttl < default_lease_ttl {
        return Err(cx.invalid(
            "keys.max_lease_ttl",
            format!(
                "must be >= keys.default_lease_ttl ({})",
                fmt_d(default_lease_ttl)
            ),
        ));
    }
    let rotate_after_wraps = match raw.rotate_after_wraps {
        None => 1 << 30,
        Some(n) => u64::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_ROTATE_AFTER_WRAPS).contains(n))
            .ok_or_else(|| {
                cx.invalid(
                    "keys.rotate_after_wraps",
                    format!(
                        "must be in 1..=4294967296 (2^32, the AES-GCM random-IV limit), got {n}"
                    ),
                )
            })?,
    };
    let floor = if raw.allow_short_destruction_wait {
        Duration::from_secs(1)
    } else {
        DAY
    };
    let min_destruction_wait = cx
        .duration(
            "keys.min_destruction_wait",
            raw.min_destruction_wait,
            DEFAULT_DESTRUCTION_WAIT,
            (Duration::from_secs(1), MAX_DESTRUCTION_WAIT),
        )
        .and_then(|d| {
            if d < floor {
                Err(cx.invalid(
                    "keys.min_destruction_wait",
                    format!(
                        "{} is below 1 day; shorter waits need allow_short_destruction_wait = true \
                         (test and dev configs on SoftHSM2 only)",
                        fmt_d(d)
                    ),
                ))
            } else {
                Ok(d)
            }
        })?;
    let default_destruction_wait = cx.duration(
        "keys.default_destruction_wait",
        raw.default_destruction_wait,
        DEFAULT_DESTRUCTION_WAIT.max(min_destruction_wait),
        (min_destruction_wait, MAX_DESTRUCTION_WAIT),
    )?;
    Ok(KeysConfig {
        default_lease_ttl,
        max_lease_ttl,
        rotate_after_wraps,
        default_destruction_wait,
        min_destruction_wait,
        allow_short_destruction_wait: raw.allow_short_destruction_wait,
    })
}

/// 1-based line and column (in characters) of byte offset `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
