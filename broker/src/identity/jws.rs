//! The JWS checks every signed token goes through, whoever issued it (workload JWTs in
//! [`super::jwt`], attestation results in `crate::attestation`): size, shape, header fields,
//! duplicate JSON keys, algorithm, `kid`, then the signature (jsonwebtoken's primitive, nothing
//! else of its validation). Claims are the caller's business.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::Reason;
use super::jwks::{self, KeyMap, asymmetric_alg};
use super::remote::{Clock, Limits, RemoteJwks};
use super::strict_json::{StrictError, parse_object};
use crate::config::JwksSource;

/// Where a token's keys come from.
pub(crate) enum Keys {
    /// A JWKS file, read at start (and at reload).
    Static(Arc<KeyMap>),
    /// A JWKS URL, fetched and cached.
    Remote(Arc<RemoteJwks>),
}

impl Keys {
    /// The keys of `source` for the issuer or verifier `name` (a log label): a file is read
    /// now, a URL is prepared (fetched later, see [`RemoteJwks`]).
    ///
    /// # Errors
    /// The file or URL shown, and what is wrong with it.
    pub(crate) fn load(
        name: &str,
        source: &JwksSource,
        limits: Limits,
        clock: &Clock,
    ) -> Result<Self, (String, String)> {
        match source {
            JwksSource::File(path) => {
                let shown = path.display().to_string();
                let bytes = std::fs::read(path).map_err(|e| (shown.clone(), e.to_string()))?;
                Ok(Self::Static(jwks::parse(&bytes).map_err(|p| (shown, p))?))
            }
            JwksSource::Url { url, ca_file } => Ok(Self::Remote(Arc::new(
                RemoteJwks::new(name, url, ca_file.as_deref(), limits, clock.clone())
                    .map_err(|p| (url.clone(), p))?,
            ))),
        }
    }

    /// The cache of a JWKS URL.
    pub(crate) fn remote(&self) -> Option<&Arc<RemoteJwks>> {
        match self {
            Self::Remote(r) => Some(r),
            Self::Static(_) => None,
        }
    }

    /// Whether `keys` is still the current key set (the very same set, not an equal one).
    pub(crate) fn holds(&self, keys: &Arc<KeyMap>) -> bool {
        match self {
            Self::Static(k) => Arc::ptr_eq(k, keys),
            Self::Remote(r) => r.current().is_some_and(|k| Arc::ptr_eq(&k, keys)),
        }
    }
}

/// A refusal, and for a `kid` the cached set lacks, where a refetch could help.
pub(crate) struct Refusal {
    pub(crate) reason: Reason,
    pub(crate) refetch: Option<(Arc<RemoteJwks>, String)>,
}

impl From<Reason> for Refusal {
    fn from(reason: Reason) -> Self {
        Self {
            reason,
            refetch: None,
        }
    }
}

/// Header rules of one kind of token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderRules {
    /// Largest token accepted, before any parsing.
    pub(crate) max_len: usize,
    /// Whether a `jku` header may be present (it is never fetched; the key source says which
    /// value it must have).
    pub(crate) jku: bool,
}

/// The keys and algorithms one issuer (or verifier) signs with.
pub(crate) struct KeySource<'a> {
    pub(crate) keys: &'a Keys,
    pub(crate) algorithms: &'a [Algorithm],
    /// The only `jku` value accepted (the configured JWKS URL); `None` refuses any `jku`.
    pub(crate) jku: Option<&'a str>,
    /// Whether a token without `kid` may use the key set's only key.
    pub(crate) kid_optional: bool,
}

/// A token whose signature verified: its payload, and the key set that verified it.
pub(crate) struct Signed {
    pub(crate) payload: Map<String, Value>,
    pub(crate) keys: Arc<KeyMap>,
}

/// Header fields a token may carry; anything else (`crit`, `x5u`, `jwk`, `x5c`, …) is refused.
const HEADER_FIELDS: [&str; 3] = ["alg", "kid", "typ"];

/// Checks `token`'s structure and signature. `pick` chooses the key source from the decoded
/// (not yet verified) payload: by `iss` for workload JWTs and attestation results alike.
pub(crate) fn verify<'a>(
    token: &str,
    rules: HeaderRules,
    pick: impl FnOnce(&Map<String, Value>) -> Result<KeySource<'a>, Reason>,
) -> Result<Signed, Refusal> {
    if token.len() > rules.max_len {
        return Err(Reason::TooLarge.into());
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::NotCompactJws.into());
    };
    let header = decode_object(header_b64, "header")?;
    if header
        .keys()
        .any(|k| !(HEADER_FIELDS.contains(&k.as_str()) || (rules.jku && k == "jku")))
    {
        return Err(Reason::HeaderField.into());
    }
    if header
        .get("typ")
        .is_some_and(|t| !t.as_str().is_some_and(|t| t == "JWT" || t == "JOSE"))
    {
        return Err(Reason::HeaderField.into());
    }
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .and_then(asymmetric_alg)
        .ok_or(Reason::AlgNotAllowed)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(Reason::HeaderField.into()),
    };
    let payload = decode_object(payload_b64, "payload")?;
    let source = pick(&payload)?;
    if let Some(jku) = header.get("jku")
        && source.jku.is_none_or(|want| jku.as_str() != Some(want))
    {
        return Err(Reason::HeaderField.into());
    }
    if kid.is_none() && !source.kid_optional {
        return Err(Reason::MissingKid.into());
    }
    if !source.algorithms.contains(&alg) {
        return Err(Reason::AlgNotAllowed.into());
    }
    let keys = match source.keys {
        Keys::Static(k) => k.clone(),
        Keys::Remote(r) => match r.current() {
            Some(k) if kid.is_none_or(|kid| k.contains_key(kid)) => k,
            current => {
                return Err(Refusal {
                    reason: if current.is_some() {
                        Reason::UnknownKid
                    } else {
                        Reason::JwksUnavailable
                    },
                    refetch: kid.map(|kid| (r.clone(), kid.to_owned())),
                });
            }
        },
    };
    let (key_alg, key) = match kid {
        Some(kid) => keys.get(kid).ok_or(Reason::UnknownKid)?,
        // No kid: only a set of exactly one key says which key is meant.
        None if keys.len() == 1 => keys.values().next().ok_or(Reason::UnknownKid)?,
        None => return Err(Reason::MissingKid.into()),
    };
    if *key_alg != alg {
        return Err(Reason::AlgKeyMismatch.into());
    }
    if sig_b64.is_empty() || URL_SAFE_NO_PAD.decode(sig_b64).is_err() {
        return Err(Reason::BadSignature.into());
    }
    let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
    match jsonwebtoken::crypto::verify(sig_b64, signed.as_bytes(), key, alg) {
        Ok(true) => Ok(Signed { payload, keys }),
        _ => Err(Reason::BadSignature.into()),
    }
}

fn decode_object(part: &str, what: &'static str) -> Result<Map<String, Value>, Reason> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Reason::Base64(what))?;
    parse_object(&bytes).map_err(|e| match e {
        StrictError::DuplicateKey => Reason::DuplicateKey(what),
        StrictError::NotObject => Reason::NotJsonObject(what),
    })
}
