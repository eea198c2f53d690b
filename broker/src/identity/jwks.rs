//! JWKS documents: parsing one into the verification keys of an issuer, from a file or from the
//! bytes a URL returned. Every key needs a `kid` and one of the accepted `alg`s; a `kid`
//! that appears twice makes the whole set unusable (which key would we pick?).

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

/// An issuer's verification keys by `kid`.
pub(crate) type KeyMap = HashMap<String, (Algorithm, DecodingKey)>;

/// Parses a JWKS document.
///
/// # Errors
/// A message for the server log: not a JWKS, a key without `kid` or usable `alg`, a key that
/// does not decode, a duplicate `kid`.
pub(crate) fn parse(bytes: &[u8]) -> Result<Arc<KeyMap>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| "a key has no kid".to_owned())?;
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| asymmetric_alg(&a.to_string()))
            .ok_or_else(|| format!("key {kid:?} has no usable alg"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid:?}: {e}"))?;
        if keys.insert(kid.clone(), (alg, key)).is_some() {
            return Err(format!("kid {kid:?} appears twice"));
        }
    }
    Ok(Arc::new(keys))
}

/// The algorithms keybroker can ever accept, by exact JOSE name (`NoNe`, `HS256` are not).
pub(crate) fn asymmetric_alg(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "PS256" => Some(Algorithm::PS256),
        "PS384" => Some(Algorithm::PS384),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_duplicate_kids_are_refused() {
        assert!(parse(b"<html>").unwrap_err().starts_with("not a JWKS"));
        assert!(parse(br#"{"keys": 3}"#).is_err());
        let jwk = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a","alg":"EdDSA"}"#;
        assert_eq!(
            parse(format!(r#"{{"keys":[{jwk}]}}"#).as_bytes())
                .unwrap()
                .len(),
            1
        );
        let twice = format!(r#"{{"keys":[{jwk},{jwk}]}}"#);
        assert_eq!(
            parse(twice.as_bytes()).unwrap_err(),
            "kid \"a\" appears twice"
        );
    }
}
