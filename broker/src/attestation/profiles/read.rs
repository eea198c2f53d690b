//! Typed claim readers shared by the profiles. Every claim has exactly one JSON type: a value of
//! another type (`null` included) is refused with the claim's name, never coerced or skipped.
//! Readers take `&Object` or `Option<&Object>` (an absent parent reads as an absent claim), so
//! nested claims chain: `object(object(claims, "quote", ..)?, "body", ..)?`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::{BoundKey, ProfileRefusal};

/// A JSON object.
pub(super) type Object = Map<String, Value>;

/// `map[key]` as `T`, if present; `name` labels the refusal.
fn typed<'a, T>(
    map: impl Into<Option<&'a Object>>,
    key: &str,
    name: &'static str,
    as_type: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<Option<T>, ProfileRefusal> {
    map.into()
        .and_then(|map| map.get(key))
        .map(|v| as_type(v).ok_or(ProfileRefusal::ClaimType(name)))
        .transpose()
}

/// An object claim, if present.
pub(super) fn object<'a>(
    map: impl Into<Option<&'a Object>>,
    key: &str,
    name: &'static str,
) -> Result<Option<&'a Object>, ProfileRefusal> {
    typed(map, key, name, Value::as_object)
}

/// A string claim, if present.
pub(super) fn string<'a>(
    map: impl Into<Option<&'a Object>>,
    key: &str,
    name: &'static str,
) -> Result<Option<&'a str>, ProfileRefusal> {
    typed(map, key, name, Value::as_str)
}

/// A boolean claim, if present.
pub(super) fn boolean<'a>(
    map: impl Into<Option<&'a Object>>,
    key: &str,
    name: &'static str,
) -> Result<Option<bool>, ProfileRefusal> {
    typed(map, key, name, Value::as_bool)
}

/// An array claim, if present.
pub(super) fn array<'a>(
    map: impl Into<Option<&'a Object>>,
    key: &str,
    name: &'static str,
) -> Result<Option<&'a Vec<Value>>, ProfileRefusal> {
    typed(map, key, name, Value::as_array)
}

/// `iat` (required) and `exp` (optional), integers only (floats are refused, as EAR demands).
pub(super) fn times(payload: &Object) -> Result<(u64, Option<u64>), ProfileRefusal> {
    let iat = crate::identity::claim_time(payload, "iat")
        .ok()
        .flatten()
        .ok_or(ProfileRefusal::MissingIat)?;
    let exp = crate::identity::claim_time(payload, "exp")
        .map_err(|_| ProfileRefusal::ClaimType("exp"))?;
    Ok((iat, exp))
}

/// A hex measurement: required, an even number of 64–192 hex digits, returned lower-case.
pub(super) fn measurement<'a>(
    map: impl Into<Option<&'a Object>>,
    key: &str,
    name: &'static str,
) -> Result<String, ProfileRefusal> {
    let hex = string(map, key, name)?.ok_or(ProfileRefusal::BadMeasurement)?;
    let well_formed = (64..=192).contains(&hex.len())
        && hex.len() % 2 == 0
        && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if well_formed {
        Ok(hex.to_ascii_lowercase())
    } else {
        Err(ProfileRefusal::BadMeasurement)
    }
}

/// The conservative OR of a profile's debug indicators; at least one must be present.
pub(super) fn any_debug(indicators: &[Option<bool>]) -> Result<bool, ProfileRefusal> {
    indicators
        .iter()
        .flatten()
        .copied()
        .reduce(|a, b| a || b)
        .ok_or(ProfileRefusal::MissingDebug)
}

/// A JWK claim the TEE bound (`tee-pubkey`), if present: see [`bound_key`].
pub(super) fn recipient<'a>(
    map: impl Into<Option<&'a Object>>,
    key: &str,
    name: &'static str,
) -> Result<Option<BoundKey>, ProfileRefusal> {
    map.into()
        .and_then(|map| map.get(key))
        .map(|jwk| bound_key(jwk, name))
        .transpose()
}

/// A public JWK the TEE bound, sorted into what we can seal to.
/// A malformed JWK (no string `kty`, an unknown `kty`, a bad X25519 `x`) is refused as a
/// [`ProfileRefusal::ClaimType`] of `name`; a well-formed key of another type is
/// [`BoundKey::Unsupported`], which only a recipient request refuses.
pub(super) fn bound_key(jwk: &Value, name: &'static str) -> Result<BoundKey, ProfileRefusal> {
    let malformed = ProfileRefusal::ClaimType(name);
    let jwk = jwk.as_object().ok_or(malformed)?;
    let text = |key| string(jwk, key, name);
    let unsupported = |what: &str| Ok(BoundKey::Unsupported(what.to_owned()));
    match (text("kty")?, text("crv")?) {
        (Some("OKP"), Some("X25519")) => {
            let x = text("x")?.ok_or(malformed)?;
            let raw = URL_SAFE_NO_PAD.decode(x).map_err(|_| malformed)?;
            raw.try_into().map(BoundKey::X25519).map_err(|_| malformed)
        }
        (Some("RSA"), _) => unsupported("RSA"),
        // Curve names come from the token: only known ones are echoed into the audit reason.
        (Some(kty @ ("EC" | "OKP")), crv) => match crv {
            Some(
                crv @ ("P-256" | "P-384" | "P-521" | "secp256k1" | "Ed25519" | "Ed448" | "X448"),
            ) => unsupported(&format!("{kty} {crv}")),
            _ => unsupported(kty),
        },
        _ => Err(malformed),
    }
}
