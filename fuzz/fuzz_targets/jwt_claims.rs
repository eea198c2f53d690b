//! Fuzz target: the JWT path before the signature — compact-JWS split, base64url, the strict
//! (duplicate-refusing) JSON parser, then the typed claim rules and the mapping to a principal.
//! Nothing may panic; whatever is accepted keeps the promises the audit log and the operator
//! log rely on (Kubernetes names are names, a region claim is a region name).
//!
//! The pure files are compiled in directly, as for `envelope_parse`, so the fuzz build does
//! not build the broker.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code, reason = "only the claim rules are exercised here")]
#[path = "../../broker/src/identity/claims.rs"]
mod claims;
#[allow(dead_code, reason = "only the types are used here")]
#[path = "../../broker/src/identity/principal.rs"]
mod principal;
#[allow(dead_code, reason = "only the parser is exercised here")]
#[path = "../../broker/src/identity/strict_json.rs"]
mod strict_json;

// `claims.rs` names its siblings' types as `super::…`: the crate root here.
use principal::{Principal, Reason};

/// A Kubernetes name as the broker must have checked it: lower-case alphanumerics, `-`, `.`.
fn is_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

// The first byte picks the entry: 0, a compact token (split, base64url, then the payload);
// anything else, the decoded payload itself — libFuzzer mutates JSON far better than base64.
fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, token)) => compact(token),
        Some((_, json)) => payload(json),
        None => {}
    }
});

fn compact(token: &[u8]) {
    let Ok(token) = std::str::from_utf8(token) else {
        return;
    };
    let mut parts = token.split('.');
    let (Some(header), Some(body), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    if let Ok(bytes) = URL_SAFE_NO_PAD.decode(header) {
        let _ = strict_json::parse_object(&bytes);
    }
    if let Ok(bytes) = URL_SAFE_NO_PAD.decode(body) {
        payload(&bytes);
    }
}

fn payload(bytes: &[u8]) {
    let Ok(map) = strict_json::parse_object(bytes) else {
        return;
    };
    // A document the strict parser accepts is plain JSON to any other parser too.
    assert!(serde_json::from_slice::<serde_json::Value>(bytes).is_ok());
    let region = claims::region(&map, Some("region"));
    let Ok(c) = claims::parse(&map, Some("job")) else {
        return;
    };
    let rules = claims::Rules {
        audiences: &["keybroker".to_owned()],
        leeway: 30,
        max_lifetime: 3600,
    };
    let _ = claims::check(&c, rules, 1_800_000_000);
    let facts = claims::IssuerFacts::default();
    if let Ok(p) = claims::principal(c, &facts) {
        for name in [&p.namespace, &p.service_account, &p.pod]
            .into_iter()
            .flatten()
        {
            assert!(is_k8s_name(name), "accepted Kubernetes name {name:?}");
        }
    }
    if let Ok(Some(r)) = region {
        assert!(!r.is_empty() && r.len() <= 64 && !r.chars().any(char::is_control));
    }
}
