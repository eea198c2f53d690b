//! The mTLS part of `[identity]`: the client CA bundle, how often it is checked for changes,
//! and the allow-listed SPIFFE trust domains with the cluster facts a certificate cannot carry.

use std::path::PathBuf;
use std::time::Duration;

use hsm_config::is_valid_jurisdiction;
use serde::Deserialize;

use super::Ctx;
use crate::config::{ConfigError, IdentityMode, MtlsConfig, TrustDomainConfig};

const DEFAULT_POLL: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrustDomain {
    domain: String,
    cluster: Option<String>,
    region: Option<String>,
    jurisdiction: Option<String>,
}

/// Validates the mTLS fields: required with `mtls`/`both`, refused with `jwt` (a CA that is
/// configured but not used would be a surprise).
pub(super) fn mtls(
    cx: &Ctx<'_>,
    mode: IdentityMode,
    client_ca_file: Option<PathBuf>,
    poll: Option<String>,
    domains: Vec<RawTrustDomain>,
) -> Result<Option<MtlsConfig>, ConfigError> {
    if mode == IdentityMode::Jwt {
        let stray = if client_ca_file.is_some() {
            Some("identity.client_ca_file")
        } else if poll.is_some() {
            Some("identity.client_ca_poll_interval")
        } else if !domains.is_empty() {
            Some("identity.trust_domains")
        } else {
            None
        };
        return match stray {
            Some(field) => Err(cx.invalid(
                field,
                "only applies with identity.mode = \"mtls\" or \"both\"",
            )),
            None => Ok(None),
        };
    }
    let file = client_ca_file.ok_or_else(|| {
        cx.invalid(
            "identity.client_ca_file",
            "required with identity.mode = \"mtls\" or \"both\": the CA bundle client \
             certificates must chain to",
        )
    })?;
    if domains.is_empty() {
        return Err(cx.invalid(
            "identity.trust_domains",
            "list at least one [[identity.trust_domains]] whose SVIDs are accepted",
        ));
    }
    let mut trust_domains: Vec<TrustDomainConfig> = Vec::with_capacity(domains.len());
    for (i, d) in domains.into_iter().enumerate() {
        let field = |name: &str| format!("identity.trust_domains[{i}].{name}");
        if !is_trust_domain(&d.domain) {
            return Err(cx.invalid(
                field("domain"),
                format!(
                    "{:?} is not a SPIFFE trust domain: 1 to 255 of a-z 0-9 . - _ (no scheme, \
                     no path)",
                    d.domain
                ),
            ));
        }
        if let Some(j) = trust_domains.iter().position(|t| t.domain == d.domain) {
            return Err(cx.invalid(
                field("domain"),
                format!("{:?} is already listed at [{j}]", d.domain),
            ));
        }
        let label = |name: &str, v: Option<String>| match v {
            Some(s) if s.trim().is_empty() || s.len() > 128 || s.chars().any(char::is_control) => {
                Err(cx.invalid(field(name), "must be 1 to 128 printable characters"))
            }
            other => Ok(other),
        };
        if let Some(j) = d
            .jurisdiction
            .as_deref()
            .filter(|j| !is_valid_jurisdiction(j))
        {
            return Err(cx.invalid(
                field("jurisdiction"),
                format!("{j:?} is not a jurisdiction code: expected upper case like EU, CH, US"),
            ));
        }
        trust_domains.push(TrustDomainConfig {
            cluster: label("cluster", d.cluster)?,
            region: label("region", d.region)?,
            jurisdiction: d.jurisdiction,
            domain: d.domain,
        });
    }
    Ok(Some(MtlsConfig {
        client_ca_file: cx.resolve("identity.client_ca_file", file)?,
        client_ca_poll_interval: cx.duration(
            "identity.client_ca_poll_interval",
            poll,
            DEFAULT_POLL,
            (Duration::from_secs(1), Duration::from_secs(3600)),
        )?,
        trust_domains,
    }))
}

/// SPIFFE trust domain name: lower-case letters, digits, `.`, `-`, `_` (SPIFFE-ID §2.1).
pub(crate) fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b))
}
