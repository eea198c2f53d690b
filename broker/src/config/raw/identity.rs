//! `[identity]`: the mode (JWT, mTLS or both), trusted JWT issuers with the cluster facts a
//! token cannot carry itself (cluster, region, jurisdiction) and the claim that names the job,
//! and the mTLS client CA and trust domains (in [`super::mtls`]).

use std::path::PathBuf;
use std::time::Duration;

use hsm_config::is_valid_jurisdiction;
use serde::Deserialize;

use super::mtls::{RawTrustDomain, mtls};
use super::{Ctx, MAX_TTL, MIN_TTL};
use crate::config::{
    ConfigError, IdentityConfig, IdentityMode, JwksSource, JwtAlgorithm, JwtIssuerConfig,
};

const MAX_LEEWAY: Duration = Duration::from_secs(30);

/// Claims with a fixed meaning that cannot double as the job id.
const REGISTERED: [&str; 8] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "kubernetes.io",
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    mode: Option<String>,
    #[serde(default)]
    jwt_issuers: Vec<RawIssuer>,
    client_ca_file: Option<PathBuf>,
    client_ca_poll_interval: Option<String>,
    #[serde(default)]
    trust_domains: Vec<RawTrustDomain>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_ca_file: Option<PathBuf>,
    algorithms: Vec<String>,
    max_token_lifetime: Option<String>,
    leeway: Option<String>,
    job_claim: Option<String>,
    cluster: Option<String>,
    region: Option<String>,
    region_claim: Option<String>,
    jurisdiction: Option<String>,
}

pub(super) fn identity(cx: &Ctx<'_>, raw: RawIdentity) -> Result<IdentityConfig, ConfigError> {
    let mode = match raw.mode.as_deref() {
        None | Some("jwt") => IdentityMode::Jwt,
        Some("mtls") => IdentityMode::Mtls,
        Some("both") => IdentityMode::Both,
        Some(other) => {
            return Err(cx.invalid(
                "identity.mode",
                format!("{other:?} is not a mode: use \"jwt\", \"mtls\" or \"both\""),
            ));
        }
    };
    if raw.jwt_issuers.is_empty() && mode != IdentityMode::Mtls {
        return Err(cx.invalid(
            "identity.jwt_issuers",
            "at least one [[identity.jwt_issuers]] is required: keybroker has no anonymous mode",
        ));
    }
    let mtls = mtls(
        cx,
        mode,
        raw.client_ca_file,
        raw.client_ca_poll_interval,
        raw.trust_domains,
    )?;
    let mut jwt_issuers: Vec<JwtIssuerConfig> = Vec::with_capacity(raw.jwt_issuers.len());
    for (i, r) in raw.jwt_issuers.into_iter().enumerate() {
        let field = |name: &str| format!("identity.jwt_issuers[{i}].{name}");
        if r.issuer.trim().is_empty() {
            return Err(cx.invalid(field("issuer"), "must not be empty"));
        }
        if let Some(j) = jwt_issuers.iter().position(|x| x.issuer == r.issuer) {
            return Err(cx.invalid(
                field("issuer"),
                format!(
                    "{:?} is already configured by identity.jwt_issuers[{j}]",
                    r.issuer
                ),
            ));
        }
        if r.audiences.is_empty() {
            return Err(cx.invalid(field("audiences"), "must list at least one audience"));
        }
        if let Some(k) = r.audiences.iter().position(|a| a.trim().is_empty()) {
            return Err(cx.invalid(format!("{}[{k}]", field("audiences")), "must not be empty"));
        }
        let algorithms = algorithms(cx, &field("algorithms"), &r.algorithms)?;
        let label = |name: &str, v: Option<String>| match v {
            Some(s) if s.trim().is_empty() || s.len() > 128 || s.chars().any(char::is_control) => {
                Err(cx.invalid(field(name), "must be 1 to 128 printable characters"))
            }
            other => Ok(other),
        };
        let job_claim = label("job_claim", r.job_claim)?;
        if let Some(c) = job_claim.as_deref().filter(|c| REGISTERED.contains(c)) {
            return Err(cx.invalid(
                field("job_claim"),
                format!("{c:?} is a registered claim; name the claim that carries the job id"),
            ));
        }
        let region_claim = label("region_claim", r.region_claim)?;
        if let Some(c) = region_claim.as_deref().filter(|c| REGISTERED.contains(c)) {
            return Err(cx.invalid(
                field("region_claim"),
                format!("{c:?} is a registered claim; name the claim that carries the region"),
            ));
        }
        if let Some(j) = r
            .jurisdiction
            .as_deref()
            .filter(|j| !is_valid_jurisdiction(j))
        {
            return Err(cx.invalid(
                field("jurisdiction"),
                format!("{j:?} is not a jurisdiction code: expected upper case like EU, CH, US"),
            ));
        }
        let jwks = jwks_source(cx, &field, r.jwks_file, r.jwks_url, r.jwks_ca_file)?;
        jwt_issuers.push(JwtIssuerConfig {
            job_claim,
            cluster: label("cluster", r.cluster)?,
            region: label("region", r.region)?,
            region_claim,
            jurisdiction: r.jurisdiction,
            issuer: r.issuer,
            audiences: r.audiences,
            jwks,
            algorithms,
            max_token_lifetime: cx.duration(
                &field("max_token_lifetime"),
                r.max_token_lifetime,
                Duration::from_secs(3600),
                (MIN_TTL, MAX_TTL),
            )?,
            leeway: cx.duration(
                &field("leeway"),
                r.leeway,
                MAX_LEEWAY,
                (Duration::ZERO, MAX_LEEWAY),
            )?,
        });
    }
    Ok(IdentityConfig {
        mode,
        jwt_issuers,
        mtls,
    })
}

/// The `algorithms` list of an issuer or attestation verifier: at least one, asymmetric only.
pub(super) fn algorithms(
    cx: &Ctx<'_>,
    field: &str,
    names: &[String],
) -> Result<Vec<JwtAlgorithm>, ConfigError> {
    if names.is_empty() {
        return Err(cx.invalid(
            field,
            "must list at least one of RS256, PS256, PS384, ES256, EdDSA",
        ));
    }
    let mut algorithms = Vec::with_capacity(names.len());
    for (k, name) in names.iter().enumerate() {
        let alg = JwtAlgorithm::from_jose(name)
            .ok_or_else(|| cx.invalid(format!("{field}[{k}]"), why_not(name)))?;
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    Ok(algorithms)
}

/// Exactly one of `jwks_file` and `jwks_url` (with its optional CA), as a [`JwksSource`].
pub(super) fn jwks_source(
    cx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
    file: Option<PathBuf>,
    url: Option<String>,
    ca_file: Option<PathBuf>,
) -> Result<JwksSource, ConfigError> {
    match (file, url) {
        (Some(file), None) => {
            if ca_file.is_some() {
                return Err(cx.invalid(
                    field("jwks_ca_file"),
                    "only applies to jwks_url (a jwks_file is read from disk)",
                ));
            }
            Ok(JwksSource::File(cx.resolve(&field("jwks_file"), file)?))
        }
        (None, Some(url)) => Ok(JwksSource::Url {
            url: jwks_url(&url).map_err(|p| cx.invalid(field("jwks_url"), p))?,
            ca_file: ca_file
                .map(|f| cx.resolve(&field("jwks_ca_file"), f))
                .transpose()?,
        }),
        (Some(_), Some(_)) => Err(cx.invalid(
            field("jwks_url"),
            "set exactly one of jwks_file and jwks_url, not both",
        )),
        (None, None) => Err(cx.invalid(
            field("jwks_file"),
            "set exactly one of jwks_file and jwks_url",
        )),
    }
}

/// A JWKS URL: `https://host/…`, or `http://` only to a loopback address (tests, development):
/// keys fetched in clear could be swapped by anyone on the path.
fn jwks_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(format!("{text:?} has no host")),
    };
    match url.scheme() {
        "https" => Ok(url.into()),
        "http" if loopback => Ok(url.into()),
        "http" => Err(format!(
            "{text:?}: plain http is allowed only to a loopback address; use https://"
        )),
        other => Err(format!("scheme {other:?} is not supported; use https://")),
    }
}

fn why_not(alg: &str) -> String {
    let reason = if alg.eq_ignore_ascii_case("none") {
        "unsigned tokens are never accepted"
    } else if alg.to_ascii_uppercase().starts_with("HS") {
        "HMAC algorithms are not accepted: a verifier holding the key could forge tokens"
    } else {
        "not supported"
    };
    format!("{alg:?}: {reason}; allowed: RS256, PS256, PS384, ES256, EdDSA")
}
