//! JWT verification with issuer-pinned JWKS files.
//!
//! Cheap structural checks come before any signature work: size, shape, header fields (only
//! `alg`, `kid`, `typ`), duplicate JSON keys, known issuer, `kid`, algorithm. Then the signature
//! (jsonwebtoken's primitive, nothing else of its validation), then our own typed claim rules
//! in [`super::claims`], so every edge is ours and tested.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

use super::claims::{self, IssuerFacts, Rules};
use super::strict_json::{StrictError, parse_object};
use super::{IdentityError, Principal, Reason};

/// Largest token accepted, before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// One trusted issuer.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (a token must carry exactly one of them).
    pub audiences: Vec<String>,
    /// JWKS file.
    pub jwks_file: PathBuf,
    /// Allowed algorithms (never `none`, never HMAC).
    pub algorithms: Vec<Algorithm>,
    /// Longest accepted `exp - iat`.
    pub max_token_lifetime: Duration,
    /// Clock skew tolerance (at most 30 s).
    pub leeway: Duration,
    /// Claim carrying the job id, if this issuer has one.
    pub job_claim: Option<String>,
    /// Cluster whose workloads this issuer vouches for.
    pub cluster: Option<String>,
    /// Region of that cluster.
    pub region: Option<String>,
    /// Jurisdiction of that cluster.
    pub jurisdiction: Option<String>,
}

struct Issuer {
    settings: IssuerSettings,
    facts: IssuerFacts,
    keys: HashMap<String, (Algorithm, DecodingKey)>,
}

/// Verifies bearer tokens against the configured issuers.
pub struct JwtVerifier {
    issuers: HashMap<String, Issuer>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Header fields a token may carry; anything else (`crit`, `jku`, `x5u`, `jwk`, …) is refused.
const HEADER_FIELDS: [&str; 3] = ["alg", "kid", "typ"];

impl JwtVerifier {
    /// Loads every issuer's JWKS file.
    ///
    /// # Errors
    /// A JWKS file is unreadable, is not a JWKS, or holds a key without `kid` or `alg`.
    pub fn new(settings: Vec<IssuerSettings>) -> Result<Self, IdentityError> {
        let mut issuers = HashMap::new();
        for s in settings {
            let keys = load_jwks(&s)?;
            let facts = IssuerFacts {
                cluster: s.cluster.clone(),
                region: s.region.clone(),
                jurisdiction: s.jurisdiction.clone(),
            };
            issuers.insert(
                s.issuer.clone(),
                Issuer {
                    settings: s,
                    facts,
                    keys,
                },
            );
        }
        Ok(Self { issuers })
    }

    /// Verifies `token` at unix time `now` and maps it to a [`Principal`].
    ///
    /// # Errors
    /// [`IdentityError::Invalid`] with the [`Reason`] for any token that is not exactly right.
    pub fn verify(&self, token: &str, now: u64) -> Result<Principal, IdentityError> {
        self.check(token, now).map_err(IdentityError::Invalid)
    }

    fn check(&self, token: &str, now: u64) -> Result<Principal, Reason> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Reason::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reason::NotCompactJws);
        };
        let header = decode_object(header_b64, "header")?;
        if header.keys().any(|k| !HEADER_FIELDS.contains(&k.as_str())) {
            return Err(Reason::HeaderField);
        }
        if header
            .get("typ")
            .is_some_and(|t| !t.as_str().is_some_and(|t| t == "JWT" || t == "JOSE"))
        {
            return Err(Reason::HeaderField);
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(asymmetric_alg)
            .ok_or(Reason::AlgNotAllowed)?;
        let kid = match header.get("kid") {
            None => return Err(Reason::MissingKid),
            Some(Value::String(k)) => k.as_str(),
            Some(_) => return Err(Reason::HeaderField),
        };
        let payload = decode_object(payload_b64, "payload")?;
        let issuer = self
            .issuers
            .get(claims::issuer(&payload)?)
            .ok_or(Reason::UnknownIssuer)?;
        if !issuer.settings.algorithms.contains(&alg) {
            return Err(Reason::AlgNotAllowed);
        }
        let (key_alg, key) = issuer.keys.get(kid).ok_or(Reason::UnknownKid)?;
        if *key_alg != alg {
            return Err(Reason::AlgKeyMismatch);
        }
        if sig_b64.is_empty() || URL_SAFE_NO_PAD.decode(sig_b64).is_err() {
            return Err(Reason::BadSignature);
        }
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        match jsonwebtoken::crypto::verify(sig_b64, signed.as_bytes(), key, alg) {
            Ok(true) => {}
            _ => return Err(Reason::BadSignature),
        }
        let s = &issuer.settings;
        let c = claims::parse(&payload, s.job_claim.as_deref())?;
        let rules = Rules {
            audiences: &s.audiences,
            leeway: s.leeway.as_secs(),
            max_lifetime: s.max_token_lifetime.as_secs(),
        };
        claims::check(&c, rules, now)?;
        claims::principal(c, &issuer.facts)
    }
}

/// The algorithms keybroker can ever accept, by exact JOSE name (`NoNe`, `HS256` are not).
fn asymmetric_alg(name: &str) -> Option<Algorithm> {
    match name {
        "RS256" => Some(Algorithm::RS256),
        "PS256" => Some(Algorithm::PS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
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

fn load_jwks(
    s: &IssuerSettings,
) -> Result<HashMap<String, (Algorithm, DecodingKey)>, IdentityError> {
    let err = |problem: String| IdentityError::Jwks {
        issuer: s.issuer.clone(),
        path: s.jwks_file.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(&s.jwks_file).map_err(|e| err(e.to_string()))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| err("a key has no kid".into()))?;
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| asymmetric_alg(&a.to_string()))
            .ok_or_else(|| err(format!("key {kid} has no usable alg")))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("key {kid}: {e}")))?;
        if keys.insert(kid.clone(), (alg, key)).is_some() {
            return Err(err(format!("kid {kid} appears twice")));
        }
    }
    Ok(keys)
}
