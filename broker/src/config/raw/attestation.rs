//! `[attestation]` and `[[attestation.verifiers]]` (docs/attestation.md): freshness limits and
//! the attestation verifiers whose results are accepted, each with its keys and claim profile.
//! An unknown profile or layout is a load error, like any unknown field.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Ctx;
use super::identity::{algorithms, jwks_source};
use crate::config::{
    AttestationConfig, AttestationProfile, AttestationVerifierConfig, ConfigError,
};

const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
const MAX_MAX_AGE: Duration = Duration::from_secs(3600);
const MIN_AGE: Duration = Duration::from_secs(10);
const MAX_LEEWAY: Duration = Duration::from_secs(30);
const DEFAULT_OUTSTANDING: usize = 100_000;
const MAX_OUTSTANDING: usize = 10_000_000;
const MAX_VERIFIERS: usize = 16;
const DEFAULT_TOKEN_BYTES: usize = 32 * 1024;
/// Stays under the gRPC server's metadata limit (`server.rs`: 64 KiB for all headers).
const MAX_TOKEN_BYTES: usize = 48 * 1024;
const MIN_TOKEN_BYTES: usize = 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAttestation {
    max_age: Option<String>,
    nonce_ttl: Option<String>,
    max_outstanding_nonces: Option<usize>,
    verifiers: Vec<RawVerifier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerifier {
    name: String,
    profile: String,
    layout: Option<String>,
    issuer: Option<String>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_ca_file: Option<PathBuf>,
    algorithms: Vec<String>,
    #[serde(default = "yes")]
    require_evidence_nonce: bool,
    max_token_bytes: Option<usize>,
    leeway: Option<String>,
}

fn yes() -> bool {
    true
}

pub(super) fn attestation(
    cx: &Ctx<'_>,
    raw: RawAttestation,
) -> Result<AttestationConfig, ConfigError> {
    let max_age = cx.duration(
        "attestation.max_age",
        raw.max_age,
        DEFAULT_MAX_AGE,
        (MIN_AGE, MAX_MAX_AGE),
    )?;
    let nonce_ttl = cx.duration(
        "attestation.nonce_ttl",
        raw.nonce_ttl,
        DEFAULT_MAX_AGE,
        (Duration::from_secs(1), MAX_MAX_AGE),
    )?;
    let max_outstanding_nonces = raw.max_outstanding_nonces.unwrap_or(DEFAULT_OUTSTANDING);
    if !(1..=MAX_OUTSTANDING).contains(&max_outstanding_nonces) {
        return Err(cx.invalid(
            "attestation.max_outstanding_nonces",
            format!("must be 1 to {MAX_OUTSTANDING}"),
        ));
    }
    if raw.verifiers.is_empty() || raw.verifiers.len() > MAX_VERIFIERS {
        return Err(cx.invalid(
            "attestation.verifiers",
            format!("1 to {MAX_VERIFIERS} [[attestation.verifiers]] are required"),
        ));
    }
    let mut names = BTreeSet::new();
    let mut issuers = BTreeSet::new();
    let mut verifiers = Vec::with_capacity(raw.verifiers.len());
    for (i, r) in raw.verifiers.into_iter().enumerate() {
        let field = |f: &str| format!("attestation.verifiers[{i}].{f}");
        if r.name.is_empty()
            || r.name.len() > 64
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(cx.invalid(field("name"), "must be 1 to 64 of [A-Za-z0-9._-]"));
        }
        if !names.insert(r.name.clone()) {
            return Err(cx.invalid(field("name"), format!("{:?} is configured twice", r.name)));
        }
        let profile = match (r.profile.as_str(), r.layout.as_deref()) {
            ("ear", Some("trustee")) => AttestationProfile::EarTrustee,
            ("ear", other) => {
                return Err(cx.invalid(
                    field("layout"),
                    format!(
                        "{other:?}: an EAR verifier needs layout = \"trustee\" (EAR standardises \
                         no TEE claims; the layout says where its producer puts them)"
                    ),
                ));
            }
            ("intel-trust-authority", None) => AttestationProfile::IntelTrustAuthority,
            ("azure-attestation", None) => AttestationProfile::AzureAttestation,
            ("intel-trust-authority" | "azure-attestation", Some(_)) => {
                return Err(cx.invalid(field("layout"), "only EAR verifiers have a layout"));
            }
            (other, _) => {
                return Err(cx.invalid(
                    field("profile"),
                    format!(
                        "{other:?} is not a profile: use \"ear\", \"intel-trust-authority\" or \
                         \"azure-attestation\""
                    ),
                ));
            }
        };
        if let Some(iss) = &r.issuer
            && (iss.trim().is_empty() || iss.len() > 256)
        {
            return Err(cx.invalid(field("issuer"), "must be 1 to 256 characters"));
        }
        // A result is matched to its verifier by `iss`; at most one verifier takes results
        // without one (EAR has no `iss`).
        if !issuers.insert(r.issuer.clone()) {
            return Err(cx.invalid(
                field("issuer"),
                match &r.issuer {
                    Some(iss) => format!("{iss:?} is already another verifier's issuer"),
                    None => "only one verifier may have no issuer".to_owned(),
                },
            ));
        }
        let max_token_bytes = r.max_token_bytes.unwrap_or(DEFAULT_TOKEN_BYTES);
        if !(MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&max_token_bytes) {
            return Err(cx.invalid(
                field("max_token_bytes"),
                format!("must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES}"),
            ));
        }
        verifiers.push(AttestationVerifierConfig {
            profile,
            issuer: r.issuer,
            jwks: jwks_source(cx, &field, r.jwks_file, r.jwks_url, r.jwks_ca_file)?,
            algorithms: algorithms(cx, &field("algorithms"), &r.algorithms)?,
            require_evidence_nonce: r.require_evidence_nonce,
            max_token_bytes,
            leeway: cx.duration(
                &field("leeway"),
                r.leeway,
                MAX_LEEWAY,
                (Duration::ZERO, MAX_LEEWAY),
            )?,
            name: r.name,
        });
    }
    Ok(AttestationConfig {
        max_age,
        nonce_ttl,
        max_outstanding_nonces,
        verifiers,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn parse(toml_text: &str) -> Result<AttestationConfig, String> {
        let raw: RawAttestation = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let cx = Ctx {
            path: std::path::Path::new("/etc/keybroker/broker.toml"),
            base: PathBuf::from("/etc/keybroker"),
        };
        attestation(&cx, raw).map_err(|e| e.to_string())
    }

    const ITA: &str = "[[verifiers]]\nname = \"ita-eu\"\nprofile = \"intel-trust-authority\"\n\
        issuer = \"Intel Trust Authority\"\n\
        jwks_url = \"https://portal.eu.trustauthority.intel.com/certs\"\n\
        algorithms = [\"PS384\", \"RS256\"]\n";

    #[test]
    fn defaults_and_a_full_verifier() {
        let c = parse(ITA).unwrap();
        assert_eq!(c.max_age, Duration::from_secs(300));
        assert_eq!(c.nonce_ttl, Duration::from_secs(300));
        assert_eq!(c.max_outstanding_nonces, 100_000);
        let v = &c.verifiers[0];
        assert_eq!(v.profile, AttestationProfile::IntelTrustAuthority);
        assert!(v.require_evidence_nonce);
        assert_eq!(v.max_token_bytes, 32 * 1024);
        assert_eq!(v.algorithms.len(), 2);
        let ear = "[[verifiers]]\nname = \"t\"\nprofile = \"ear\"\nlayout = \"trustee\"\n\
                   jwks_file = \"t.json\"\nalgorithms = [\"ES256\"]\n";
        let c = parse(ear).unwrap();
        assert_eq!(c.verifiers[0].profile, AttestationProfile::EarTrustee);
        assert_eq!(c.verifiers[0].issuer, None);
    }

    #[test]
    fn unknown_profiles_layouts_and_fields_fail_loading() {
        for (text, needle) in [
            (
                ITA.replace("intel-trust-authority", "nitro"),
                "not a profile",
            ),
            (ITA.replace("intel-trust-authority", "ear"), "layout"),
            (
                ITA.replace(
                    "name = \"ita-eu\"",
                    "name = \"ita-eu\"\nlayout = \"trustee\"",
                ),
                "only EAR",
            ),
            (
                ITA.replace(
                    "profile = \"intel-trust-authority\"",
                    "profile = \"ear\"\nlayout = \"veraison\"",
                ),
                "layout",
            ),
            (format!("{ITA}colour = \"blue\"\n"), "unknown field"),
            (ITA.replace("\"PS384\", ", "\"HS256\", "), "HMAC"),
            (
                ITA.replace("name = \"ita-eu\"", "name = \"ita eu\""),
                "name",
            ),
            (format!("{ITA}{ITA}"), "configured twice"),
            (
                format!("{ITA}{}", ITA.replace("ita-eu", "ita-2")),
                "already another verifier's issuer",
            ),
            (format!("max_age = \"2h\"\n{ITA}"), "out of range"),
            (ITA.replace("https://portal", "http://portal"), "loopback"),
            ("verifiers = []".to_owned(), "1 to 16"),
            (
                format!("{ITA}max_token_bytes = 100000\n"),
                "max_token_bytes",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let no_iss = "[[verifiers]]\nname = \"a\"\nprofile = \"ear\"\nlayout = \"trustee\"\n\
                      jwks_file = \"t.json\"\nalgorithms = [\"ES256\"]\n";
        let e = parse(&format!("{no_iss}{}", no_iss.replace("\"a\"", "\"b\""))).unwrap_err();
        assert!(e.contains("only one verifier may have no issuer"), "{e}");
    }
}
