//! JWT verification with issuer-pinned JWKS files.
//!
//! Cheap structural checks come before any signature work: size, shape, header fields, known
//! issuer, `kid`, algorithm. Then jsonwebtoken verifies the signature and registered claims,
//! and we check what it does not: `iat` not in the future and the token's total lifetime.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{IdentityError, Principal};

/// Largest token accepted, before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// One trusted issuer.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// `iss` value.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// JWKS file.
    pub jwks_file: PathBuf,
    /// Allowed algorithms (never `none`, never HMAC).
    pub algorithms: Vec<Algorithm>,
    /// Longest accepted `exp - iat`.
    pub max_token_lifetime: Duration,
    /// Clock skew tolerance (at most 30 s).
    pub leeway: Duration,
}

struct Issuer {
    settings: IssuerSettings,
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

#[derive(Deserialize)]
struct UnverifiedClaims {
    iss: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderFields {
    alg: String,
    kid: Option<String>,
    #[allow(dead_code)]
    typ: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    iat: u64,
    exp: u64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<K8sClaims>,
}

#[derive(Deserialize)]
struct K8sClaims {
    namespace: Option<String>,
    serviceaccount: Option<K8sRef>,
    pod: Option<K8sRef>,
}

#[derive(Deserialize)]
struct K8sRef {
    name: String,
}

impl JwtVerifier {
    /// Loads every issuer's JWKS file.
    ///
    /// # Errors
    /// A JWKS file is unreadable, is not a JWKS, or holds a key without `kid` or `alg`.
    pub fn new(settings: Vec<IssuerSettings>) -> Result<Self, IdentityError> {
        let mut issuers = HashMap::new();
        for s in settings {
            let keys = load_jwks(&s)?;
            issuers.insert(s.issuer.clone(), Issuer { settings: s, keys });
        }
        Ok(Self { issuers })
    }

    /// Verifies `token` at unix time `now` and maps it to a [`Principal`].
    ///
    /// # Errors
    /// [`IdentityError::Invalid`] or [`IdentityError::Rejected`] for any token that is not
    /// exactly right.
    pub fn verify(&self, token: &str, now: u64) -> Result<Principal, IdentityError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(IdentityError::Invalid("token larger than 8 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::Invalid("not a compact JWS (three parts)"));
        };
        let header: HeaderFields =
            decode_part(header).ok_or(IdentityError::Invalid("header is not alg/kid/typ JSON"))?;
        let unverified: UnverifiedClaims =
            decode_part(payload).ok_or(IdentityError::Invalid("payload has no iss"))?;
        let issuer = self
            .issuers
            .get(&unverified.iss)
            .ok_or(IdentityError::Invalid("unknown issuer"))?;
        let kid = header
            .kid
            .ok_or(IdentityError::Invalid("header has no kid"))?;
        let (alg, key) = issuer
            .keys
            .get(&kid)
            .ok_or(IdentityError::Invalid("unknown kid"))?;
        let header_alg: Algorithm = header
            .alg
            .parse()
            .map_err(|_| IdentityError::Invalid("unsupported alg"))?;
        if header_alg != *alg || !issuer.settings.algorithms.contains(alg) {
            return Err(IdentityError::Invalid("alg not allowed for this key"));
        }
        let mut validation = Validation::new(*alg);
        validation.set_issuer(&[&issuer.settings.issuer]);
        validation.set_audience(&issuer.settings.audiences);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = issuer.settings.leeway.as_secs();
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(IdentityError::Rejected)?;
        let claims = data.claims;
        if claims.iat > now + issuer.settings.leeway.as_secs() {
            return Err(IdentityError::Invalid("iat is in the future"));
        }
        if claims.exp.saturating_sub(claims.iat) > issuer.settings.max_token_lifetime.as_secs() {
            return Err(IdentityError::Invalid(
                "token lifetime exceeds the issuer's maximum",
            ));
        }
        Ok(principal(claims))
    }
}

fn principal(claims: Claims) -> Principal {
    let k8s = claims.kubernetes;
    let spiffe_id = claims
        .sub
        .starts_with("spiffe://")
        .then(|| claims.sub.clone());
    Principal {
        issuer: claims.iss,
        subject: claims.sub,
        namespace: k8s.as_ref().and_then(|k| k.namespace.clone()),
        service_account: k8s
            .as_ref()
            .and_then(|k| k.serviceaccount.as_ref().map(|r| r.name.clone())),
        pod: k8s
            .as_ref()
            .and_then(|k| k.pod.as_ref().map(|r| r.name.clone())),
        spiffe_id,
        job_id: None,
    }
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
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
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            .ok_or_else(|| err(format!("key {kid} has no usable alg")))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| err(format!("key {kid}: {e}")))?;
        keys.insert(kid, (alg, key));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    struct Fixture {
        _dir: tempfile::TempDir,
        verifier: JwtVerifier,
        key: EncodingKey,
    }

    const ISS: &str = "https://issuer.test";

    fn fixture() -> Fixture {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let x = URL_SAFE_NO_PAD.encode(kp.public_key_raw());
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        let set = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig"}]});
        std::fs::write(&jwks, set.to_string()).unwrap();
        let verifier = JwtVerifier::new(vec![IssuerSettings {
            issuer: ISS.into(),
            audiences: vec!["keybroker".into()],
            jwks_file: jwks,
            algorithms: vec![Algorithm::EdDSA],
            max_token_lifetime: Duration::from_secs(3600),
            leeway: Duration::from_secs(30),
        }])
        .unwrap();
        let key = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap();
        Fixture {
            _dir: dir,
            verifier,
            key,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims() -> serde_json::Value {
        let now = now();
        json!({"iss": ISS, "sub": "system:serviceaccount:ml:trainer", "aud": "keybroker",
               "iat": now, "nbf": now, "exp": now + 600,
               "kubernetes.io": {"namespace": "ml", "serviceaccount": {"name": "trainer"}, "pod": {"name": "p-1"}}})
    }

    fn sign(f: &Fixture, claims: &serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, claims, &f.key).unwrap()
    }

    #[test]
    fn kubernetes_token_maps_to_principal() {
        let f = fixture();
        let p = f.verifier.verify(&sign(&f, &claims()), now()).unwrap();
        assert_eq!(p.subject, "system:serviceaccount:ml:trainer");
        assert_eq!(p.namespace.as_deref(), Some("ml"));
        assert_eq!(p.service_account.as_deref(), Some("trainer"));
        assert_eq!(p.pod.as_deref(), Some("p-1"));
        assert_eq!(p.spiffe_id, None);
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_rejected() {
        let f = fixture();
        let good = sign(&f, &claims());
        // Flip one signature character.
        let mut forged = good.clone().into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        assert!(f.verifier.verify(&forged, now()).is_err());
        let mut c = claims();
        c["iat"] = json!(now() - 700);
        c["nbf"] = json!(now() - 700);
        c["exp"] = json!(now() - 100);
        assert!(f.verifier.verify(&sign(&f, &c), now()).is_err(), "expired");
        let mut c = claims();
        c["aud"] = json!("someone-else");
        assert!(f.verifier.verify(&sign(&f, &c), now()).is_err(), "audience");
        let mut c = claims();
        c["iss"] = json!("https://evil.test");
        assert!(f.verifier.verify(&sign(&f, &c), now()).is_err(), "issuer");
        let mut c = claims();
        c["iat"] = json!(now() + 120);
        assert!(
            f.verifier.verify(&sign(&f, &c), now()).is_err(),
            "iat in future"
        );
        let mut c = claims();
        c["exp"] = json!(now() + 7200);
        assert!(f.verifier.verify(&sign(&f, &c), now()).is_err(), "lifetime");
    }

    #[test]
    fn malformed_tokens_are_rejected_before_signature_work() {
        let f = fixture();
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.??.**",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(matches!(
                f.verifier.verify(bad, now()),
                Err(IdentityError::Invalid(_))
            ));
        }
        // `alg: none` and extra header fields (`jku`) are refused.
        let body = URL_SAFE_NO_PAD.encode(claims().to_string());
        let none = format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#)
        );
        assert!(f.verifier.verify(&none, now()).is_err());
        let jku = format!(
            "{}.{body}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","kid":"k1","jku":"https://x"}"#)
        );
        assert!(matches!(
            f.verifier.verify(&jku, now()),
            Err(IdentityError::Invalid(_))
        ));
    }
}
