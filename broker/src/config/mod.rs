//! Broker configuration (TOML): listener, TLS, store, identity, residency, key defaults.
//!
//! [`BrokerConfig::load`] reads the file, validates every field, resolves relative paths against
//! the file's directory and loads the HSM inventory it names. Parsing and validation are pure
//! ([`BrokerConfig::parse_with_inventory`]); file reads happen only in `load`, `parse` (the
//! inventory) and [`check_config`]. Errors name the file, the field and the problem.

mod check;
#[cfg(test)]
mod deploy_tests;
#[cfg(test)]
mod destruction_tests;
mod error;
mod http;
mod log;
mod raw;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_identity;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hsm_config::Inventory;

pub use check::{CheckItem, CheckReport, check_config};
pub use error::ConfigError;
pub use http::{
    HttpConfig, TransitAuth, TransitConfig, TransitToken, XksConfig, XksCredentialConfig,
    XksMtlsConfig, XksStoreConfig,
};
pub use log::{LogConfig, LogFormat};
pub(crate) use raw::is_trust_domain;

/// The validated broker configuration. Every path is absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Absolute path of the config file itself (relative paths were resolved against its
    /// directory).
    pub path: PathBuf,
    /// The HSM inventory file.
    pub hsm_inventory: PathBuf,
    /// The loaded HSM inventory.
    pub inventory: Inventory,
    /// gRPC listener and TLS.
    pub server: ServerConfig,
    /// Catalog storage.
    pub store: StoreConfig,
    /// Data-residency guard.
    pub residency: ResidencyConfig,
    /// Lease and rotation defaults.
    pub keys: KeysConfig,
    /// Who may call.
    pub identity: IdentityConfig,
    /// Where the audit log lives.
    pub audit: AuditConfig,
    /// Which Cedar policy decides.
    pub policy: PolicyConfig,
    /// The HTTPS side port (transit seal endpoint), when configured.
    pub http: Option<HttpConfig>,
    /// Operator log format and levels.
    pub log: LogConfig,
    /// `[attestation]`: attestation verifiers whose results callers may present (absent: no
    /// attestation; a call carrying a result is refused).
    pub attestation: Option<AttestationConfig>,
}

/// `[attestation]` (docs/attestation.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationConfig {
    /// Oldest accepted result (`now - iat`); default 5 min, at most 1 h.
    pub max_age: Duration,
    /// How long a nonce from `GetAttestationNonce` stays valid; default 5 min, at most 1 h.
    pub nonce_ttl: Duration,
    /// Most nonces used and not yet expired (kept to refuse replays); when full, new nonces
    /// are refused until old ones expire. Default 100 000.
    pub max_outstanding_nonces: usize,
    /// The trusted verifiers.
    pub verifiers: Vec<AttestationVerifierConfig>,
}

/// One `[[attestation.verifiers]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationVerifierConfig {
    /// Name, for policy (`context.attestation.verifier`), audit and logs.
    pub name: String,
    /// The claim profile of its results.
    pub profile: AttestationProfile,
    /// The `iss` of its results; `None` for the one verifier whose results carry no `iss`.
    pub issuer: Option<String>,
    /// Where its signing keys come from.
    pub jwks: JwksSource,
    /// Accepted signature algorithms.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Refuse results whose nonce is only echoed by the verifier, not bound into the TEE's
    /// evidence; default true.
    pub require_evidence_nonce: bool,
    /// Largest result accepted; default 32 KiB, at most 48 KiB (it travels in gRPC metadata).
    pub max_token_bytes: usize,
    /// Clock skew tolerance; default 30 s, at most 30 s.
    pub leeway: Duration,
}

/// How a verifier's results are read (see `attestation::profiles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestationProfile {
    /// IETF RATS EAR in the Confidential Containers Trustee layout.
    EarTrustee,
    /// Intel Trust Authority.
    IntelTrustAuthority,
    /// Microsoft Azure Attestation.
    AzureAttestation,
}

impl AttestationProfile {
    /// The config name (`profile`, plus `layout` for EAR).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EarTrustee => "ear",
            Self::IntelTrustAuthority => "intel-trust-authority",
            Self::AzureAttestation => "azure-attestation",
        }
    }
}

/// Refuses a config file that group or others may write. (Reading is allowed: a config holds
/// no secret — PINs come from env or a 0600 file, transit tokens are stored as hashes — and
/// read-only mounts such as Kubernetes ConfigMaps are 0444.)
fn not_writable_by_others(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(ConfigError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Directory of the segment log (created on first start); default `audit` next to the
    /// config file.
    pub dir: PathBuf,
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyConfig {
    /// Cedar policy file; the built-in default policy when absent.
    pub file: Option<PathBuf>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain, leaf first.
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// `server.replica_id`: this replica's name in audit records; the host name when unset.
    pub replica_id: Option<String>,
}

/// `[store]`: where the catalog lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `kind = "sqlite"` (default): one file, one broker.
    Sqlite {
        /// SQLite catalog database (created on first start).
        path: PathBuf,
    },
    /// `kind = "postgres"`: one database shared by several replicas.
    Postgres(PostgresConfig),
}

/// `[store]` with `kind = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Where the connection URL comes from.
    pub url: PgUrlSource,
    /// Connections in this replica's pool.
    pub max_connections: u32,
}

/// Where the PostgreSQL URL comes from. The URL text is never logged.
#[derive(Clone, PartialEq, Eq)]
pub enum PgUrlSource {
    /// `store.url`: a URL without a password (the password, if any, comes from `PGPASSWORD`
    /// or `~/.pgpass`).
    Inline(String),
    /// `store.url_file`: a file holding the whole URL, password included; read at start.
    File(PathBuf),
}

impl std::fmt::Debug for PgUrlSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgUrlSource::Inline(_) => f.write_str("Inline([redacted])"),
            PgUrlSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// `[residency]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidencyConfig {
    /// Jurisdiction codes a key's HSM may be in; default `{"EU"}`.
    pub allowed_jurisdictions: BTreeSet<String>,
    /// Refuse callers whose verified region does not match `allowed_regions`.
    pub require_caller_region: bool,
    /// Region patterns: exact (`eu-west-1`) or a prefix ending in `*` (`eu-*`).
    pub allowed_regions: Vec<String>,
}

impl ResidencyConfig {
    /// Whether `region` matches one of `allowed_regions`.
    #[must_use]
    pub fn region_allowed(&self, region: &str) -> bool {
        self.allowed_regions
            .iter()
            .any(|p| match p.strip_suffix('*') {
                Some(prefix) => region.starts_with(prefix),
                None => region == p,
            })
    }
}

/// `[keys]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeysConfig {
    /// Lease TTL when the caller asks for none; default 15 min.
    pub default_lease_ttl: Duration,
    /// Longest lease a caller may ask for; default 1 h, at least `default_lease_ttl`.
    pub max_lease_ttl: Duration,
    /// Wraps per key version before automatic rotation; default 2^30, at most 2^32
    /// (NIST SP 800-38D bound for random 96-bit IVs).
    pub rotate_after_wraps: u64,
    /// Waiting period of `ScheduleKeyDestruction` when the request gives none; default 7 days.
    pub default_destruction_wait: Duration,
    /// Shortest waiting period a request may ask for; default 7 days. Below 1 day only with
    /// `allow_short_destruction_wait`.
    pub min_destruction_wait: Duration,
    /// Test and dev only: lets `min_destruction_wait` go down to 1 s. Refused unless every HSM
    /// of the inventory is a SoftHSM2 token (`provider = "SoftHSM2"`).
    pub allow_short_destruction_wait: bool,
}

/// `[identity]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// Which credentials a caller must present; default [`IdentityMode::Jwt`].
    pub mode: IdentityMode,
    /// Trusted JWT issuers; at least one unless `mode = "mtls"` (there is no anonymous mode).
    pub jwt_issuers: Vec<JwtIssuerConfig>,
    /// mTLS settings; present exactly when `mode` is `mtls` or `both`.
    pub mtls: Option<MtlsConfig>,
}

/// `[identity] mode`: which credentials every call must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentityMode {
    /// A bearer JWT from a configured issuer (no client certificate is asked for).
    #[default]
    Jwt,
    /// An X.509-SVID client certificate chaining to `client_ca_file`.
    Mtls,
    /// Both; a SPIFFE ID in the token must equal the certificate's.
    Both,
}

/// The mTLS part of `[identity]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsConfig {
    /// PEM bundle of the CA certificates client SVIDs must chain to; reloaded when it changes
    /// and on SIGHUP.
    pub client_ca_file: PathBuf,
    /// How often the bundle file is checked for changes; default 5 s.
    pub client_ca_poll_interval: Duration,
    /// Accepted SPIFFE trust domains, with the facts a certificate cannot carry.
    pub trust_domains: Vec<TrustDomainConfig>,
}

/// One `[[identity.trust_domains]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustDomainConfig {
    /// Trust domain name (`prod.eu.example`), compared byte for byte.
    pub domain: String,
    /// Cluster whose workloads this trust domain names.
    pub cluster: Option<String>,
    /// Region of that cluster.
    pub region: Option<String>,
    /// Jurisdiction of that cluster.
    pub jurisdiction: Option<String>,
}

/// Where an issuer's public keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS file, read once at start.
    File(PathBuf),
    /// A JWKS URL, fetched at start and refreshed in the background.
    Url {
        /// `https://…` (or `http://` to a loopback address, for tests and development).
        url: String,
        /// PEM CA bundle to verify the endpoint with, instead of the system roots.
        ca_file: Option<PathBuf>,
    },
}

/// One `[[identity.jwt_issuers]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuerConfig {
    /// Expected `iss` claim; unique among issuers.
    pub issuer: String,
    /// Accepted `aud` values; at least one.
    pub audiences: Vec<String>,
    /// Where the issuer's public keys come from (`jwks_file` or `jwks_url`).
    pub jwks: JwksSource,
    /// Accepted signature algorithms; at least one, asymmetric only.
    pub algorithms: Vec<JwtAlgorithm>,
    /// Longest accepted `exp - iat`; default 1 h.
    pub max_token_lifetime: Duration,
    /// Clock skew tolerance; default 30 s, at most 30 s.
    pub leeway: Duration,
    /// Top-level claim carrying the job id (verified identity only; never the request body).
    pub job_claim: Option<String>,
    /// Cluster whose workloads this issuer vouches for.
    pub cluster: Option<String>,
    /// Region of that cluster (`eu-west-1`, …), for the residency guard and policy.
    pub region: Option<String>,
    /// Top-level claim carrying the caller's region, which then wins over `region` for
    /// tokens that carry it (verified identity only).
    pub region_claim: Option<String>,
    /// Jurisdiction of that cluster (`EU`, …).
    pub jurisdiction: Option<String>,
}

/// The JWT signature algorithms keybroker accepts. `none` and HMAC are not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384 (Intel Trust Authority's default).
    Ps384,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl JwtAlgorithm {
    /// The JOSE `alg` name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    /// The algorithm with this JOSE `alg` name, if keybroker accepts it.
    #[must_use]
    pub fn from_jose(name: &str) -> Option<Self> {
        [
            Self::Rs256,
            Self::Ps256,
            Self::Ps384,
            Self::Es256,
            Self::EdDsa,
        ]
        .into_iter()
        .find(|a| a.as_str() == name)
    }
}

impl BrokerConfig {
    /// Reads `path`, validates it, resolves relative paths against its directory and loads the
    /// HSM inventory it names.
    ///
    /// # Errors
    /// [`ConfigError::Read`] when the file cannot be read; otherwise as [`BrokerConfig::parse`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        not_writable_by_others(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::parse(&text, path)?;
        not_writable_by_others(&config.hsm_inventory)?;
        Ok(config)
    }

    /// Parses and validates config `text` as if read from `path` (used for messages and to
    /// resolve relative paths), then loads the HSM inventory it names.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] / [`ConfigError::Invalid`] for this file,
    /// [`ConfigError::Inventory`] for the inventory, and the cross-check that at least one
    /// HSM has an allowed jurisdiction.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let validated = raw::Validated::parse(text, path)?;
        let inventory = Inventory::load(&validated.hsm_inventory)?;
        validated.finish(inventory)
    }

    /// Pure variant of [`BrokerConfig::parse`]: uses `inventory` instead of reading the file
    /// named by `hsm_inventory`.
    ///
    /// # Errors
    /// As [`BrokerConfig::parse`], without inventory read errors.
    pub fn parse_with_inventory(
        text: &str,
        path: &Path,
        inventory: Inventory,
    ) -> Result<Self, ConfigError> {
        raw::Validated::parse(text, path)?.finish(inventory)
    }
}
