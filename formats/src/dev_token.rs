//! Dev-mode tokens: the JWT `keybrokerd dev`'s built-in issuer expects, and the layout of the
//! issuer it keeps in the dev state directory. Pure: the caller reads the two files (the
//! client library and the broker both do) and hands their bytes to [`mint`].
//!
//! Layout (a contract between the broker's dev mode and its clients):
//! - `DIR/dev-issuer/issuer.json`: [`IssuerInfo`] — `{"issuer", "audience", "kid", "subject",
//!   "namespace", "service_account"}` (all strings; unknown fields are ignored);
//! - `DIR/dev-issuer/signing-key.pem`: the issuer's PKCS#8 Ed25519 private key (PEM).
//!
//! Tokens are EdDSA JWTs (`typ=JWT`, `kid` from `issuer.json`) with `iss, sub, aud, iat, nbf,
//! exp, jti` and the Kubernetes projected-token claim `kubernetes.io` (namespace, service
//! account), so the broker's identity mapping is exercised as in production.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Directory under the state dir holding the dev issuer.
pub const ISSUER_DIR: &str = "dev-issuer";
/// Issuer description file inside [`ISSUER_DIR`].
pub const ISSUER_FILE: &str = "issuer.json";
/// PKCS#8 Ed25519 private key inside [`ISSUER_DIR`].
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
/// Longest lifetime [`mint`] accepts.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why a dev token could not be minted. Never holds the token or key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// `issuer.json` is not what the contract says.
    #[error("invalid dev issuer file: {0}")]
    IssuerFile(#[source] serde_json::Error),
    /// The signing key is not a PKCS#8 Ed25519 private key in PEM.
    #[error("invalid dev signing key (want a PKCS#8 Ed25519 PEM): {0}")]
    SigningKey(#[source] jsonwebtoken::errors::Error),
    /// Signing failed.
    #[error("cannot sign dev token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The requested lifetime is zero or too large.
    #[error("invalid token lifetime {0:?}: must be between 1 second and 1 year")]
    Ttl(Duration),
    /// The service account is not a Kubernetes object name.
    #[error("invalid service account {0:?}: want a DNS-1123 name such as evaluator")]
    ServiceAccount(String),
}

/// `issuer.json`: who the dev issuer is and whom its tokens speak for by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerInfo {
    /// `iss` of its tokens.
    pub issuer: String,
    /// `aud` of its tokens.
    pub audience: String,
    /// `kid` of its signing key (in its JWKS).
    pub kid: String,
    /// Default `sub`.
    pub subject: String,
    /// Kubernetes namespace of the default workload.
    pub namespace: String,
    /// Service account of the default workload.
    pub service_account: String,
}

impl IssuerInfo {
    /// Parses `issuer.json`.
    ///
    /// # Errors
    /// [`MintError::IssuerFile`] when a field is missing or not a string.
    pub fn parse(json: &[u8]) -> Result<Self, MintError> {
        serde_json::from_slice(json).map_err(MintError::IssuerFile)
    }
}

/// JWT claims of a dev token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Not before (Unix seconds).
    pub nbf: i64,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Unique token id.
    pub jti: String,
    /// The Kubernetes projected-token claim.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
    /// Training job id, for brokers whose issuer sets `job_claim = "job"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
}

/// The `kubernetes.io` claim of a projected service-account token.
#[derive(Debug, Serialize, Deserialize)]
pub struct KubernetesClaim {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub serviceaccount: ServiceAccount,
}

/// `kubernetes.io.serviceaccount`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceAccount {
    /// Its name.
    pub name: String,
}

/// Who a dev token speaks for, beyond the dev issuer's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Workload<'a> {
    /// A `job` claim naming the training job (read by a broker whose issuer has
    /// `job_claim = "job"`; `RevokeLeases` by job then applies to the token).
    pub job: Option<&'a str>,
    /// Another service account in the dev namespace than `issuer.json`'s: a second workload
    /// (subject `system:serviceaccount:<namespace>:<name>`), e.g. to show that one workload's
    /// attestation nonce is refused to another.
    pub service_account: Option<&'a str>,
}

/// Mints a dev token for `workload`, issued at `now` (Unix seconds) and valid for `ttl`,
/// signed with `signing_key_pem` (the issuer's PKCS#8 Ed25519 PEM) as `issuer` says.
///
/// # Errors
/// `ServiceAccount` for a name that is not a DNS-1123 subdomain, `Ttl` for a zero or over-long
/// `ttl`, `SigningKey` when the key is not PKCS#8 Ed25519, `Sign` when signing fails.
pub fn mint(
    issuer: &IssuerInfo,
    signing_key_pem: &[u8],
    workload: &Workload<'_>,
    now: i64,
    ttl: Duration,
) -> Result<Zeroizing<String>, MintError> {
    if let Some(sa) = workload.service_account
        && !dns1123_subdomain(sa)
    {
        return Err(MintError::ServiceAccount(sa.to_owned()));
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(MintError::Ttl(ttl));
    }
    let key = EncodingKey::from_ed_pem(signing_key_pem).map_err(MintError::SigningKey)?;
    let lifetime = i64::try_from(ttl.as_secs()).map_err(|_| MintError::Ttl(ttl))?;
    let (sub, service_account) = match workload.service_account {
        Some(sa) => (
            format!("system:serviceaccount:{}:{sa}", issuer.namespace),
            sa.to_owned(),
        ),
        None => (issuer.subject.clone(), issuer.service_account.clone()),
    };
    let claims = Claims {
        iss: issuer.issuer.clone(),
        sub,
        aud: issuer.audience.clone(),
        iat: now,
        nbf: now,
        exp: now.saturating_add(lifetime.max(1)),
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: KubernetesClaim {
            namespace: issuer.namespace.clone(),
            serviceaccount: ServiceAccount {
                name: service_account,
            },
        },
        job: workload.job.map(str::to_owned),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(issuer.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &key).map_err(MintError::Sign)?;
    Ok(Zeroizing::new(token))
}

/// A Kubernetes object name: 1-253 of `[a-z0-9.-]`, starting and ending alphanumeric.
fn dns1123_subdomain(s: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    s.len() <= 253
        && edge(s.as_bytes().first())
        && edge(s.as_bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    /// A dev issuer's `issuer.json` (with a field from the future) and its key pair.
    fn issuer() -> anyhow::Result<(IssuerInfo, rcgen::KeyPair)> {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let info = serde_json::json!({
            "issuer": "https://dev.keybroker.local",
            "audience": "keybroker",
            "kid": "dev-1",
            "subject": "system:serviceaccount:ml:trainer",
            "namespace": "ml",
            "service_account": "trainer",
            "some_future_field": true,
        });
        Ok((IssuerInfo::parse(&serde_json::to_vec(&info)?)?, kp))
    }

    fn mint_with(
        kp: &rcgen::KeyPair,
        issuer: &IssuerInfo,
        w: &Workload<'_>,
        ttl: Duration,
    ) -> Result<Zeroizing<String>, MintError> {
        mint(issuer, kp.serialize_pem().as_bytes(), w, 1_700_000_000, ttl)
    }

    #[test]
    fn minted_token_verifies_with_issuer_public_key() -> anyhow::Result<()> {
        let (info, kp) = issuer()?;
        let token = mint_with(&kp, &info, &Workload::default(), Duration::from_secs(3600))?;

        let header = jsonwebtoken::decode_header(token.as_str())?;
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some("dev-1"));
        assert_eq!(header.typ.as_deref(), Some("JWT"));

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["keybroker"]);
        validation.set_issuer(&["https://dev.keybroker.local"]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_exp = false;
        let key = DecodingKey::from_ed_pem(kp.public_key_pem().as_bytes())?;
        let data = jsonwebtoken::decode::<Claims>(token.as_str(), &key, &validation)?;
        let c = data.claims;
        assert_eq!(c.sub, "system:serviceaccount:ml:trainer");
        assert_eq!(c.iat, 1_700_000_000);
        assert_eq!(c.exp - c.iat, 3600);
        assert_eq!(c.nbf, c.iat);
        assert_eq!(c.kubernetes.namespace, "ml");
        assert_eq!(c.kubernetes.serviceaccount.name, "trainer");
        assert!(uuid::Uuid::parse_str(&c.jti).is_ok());

        // A different key must not verify it.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let other = DecodingKey::from_ed_pem(other.public_key_pem().as_bytes())?;
        assert!(jsonwebtoken::decode::<Claims>(token.as_str(), &other, &validation).is_err());
        Ok(())
    }

    #[test]
    fn another_service_account_is_another_subject() -> anyhow::Result<()> {
        let (info, kp) = issuer()?;
        let w = Workload {
            job: None,
            service_account: Some("evaluator"),
        };
        let token = mint_with(&kp, &info, &w, Duration::from_secs(60))?;
        let payload = token.split('.').nth(1).unwrap_or_default();
        let c: Claims = serde_json::from_slice(&base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            payload,
        )?)?;
        assert_eq!(c.sub, "system:serviceaccount:ml:evaluator");
        assert_eq!(c.kubernetes.serviceaccount.name, "evaluator");
        for bad in ["", "Evaluator", "-x", "a_b"] {
            let w = Workload {
                job: None,
                service_account: Some(bad),
            };
            assert!(matches!(
                mint_with(&kp, &info, &w, Duration::from_secs(60)),
                Err(MintError::ServiceAccount(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn zero_ttl_and_a_bad_issuer_file_are_rejected() -> anyhow::Result<()> {
        let (info, kp) = issuer()?;
        assert!(matches!(
            mint_with(&kp, &info, &Workload::default(), Duration::ZERO),
            Err(MintError::Ttl(_))
        ));
        assert!(matches!(
            IssuerInfo::parse(br#"{"issuer": "x"}"#),
            Err(MintError::IssuerFile(_))
        ));
        assert!(matches!(
            mint(
                &info,
                b"not a key",
                &Workload::default(),
                0,
                Duration::from_secs(1)
            ),
            Err(MintError::SigningKey(_))
        ));
        Ok(())
    }
}
