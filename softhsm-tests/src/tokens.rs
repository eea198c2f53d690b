//! Tokens with claims the dev tooling would never mint: signed by a test broker's dev issuer
//! (so they verify), with whatever the test puts in them — long names, newlines, two
//! principals, a region claim.

use std::path::Path;

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

/// A valid dev token of `system:serviceaccount:dev:trainer` (10 minutes), after `edit` changed
/// its claims, signed by the dev issuer under `state_dir`.
///
/// # Errors
/// The issuer files are missing or unreadable, or signing fails.
pub fn mint_with(
    state_dir: &Path,
    edit: impl FnOnce(&mut Map<String, Value>),
) -> anyhow::Result<String> {
    let dir = state_dir.join("dev-issuer");
    let info: Value =
        serde_json::from_slice(&std::fs::read(dir.join("issuer.json"))?).context("issuer.json")?;
    let key = EncodingKey::from_ed_pem(&std::fs::read(dir.join("signing-key.pem"))?)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = Map::new();
    for (k, v) in [
        ("iss", info["issuer"].clone()),
        ("aud", info["audience"].clone()),
        ("sub", info["subject"].clone()),
        ("iat", json!(now)),
        ("nbf", json!(now)),
        ("exp", json!(now + 600)),
        (
            "kubernetes.io",
            json!({"namespace": info["namespace"],
                   "serviceaccount": {"name": info["service_account"]}}),
        ),
    ] {
        claims.insert(k.to_owned(), v);
    }
    edit(&mut claims);
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = info["kid"].as_str().map(str::to_owned);
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}
