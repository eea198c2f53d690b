//! Dev-mode tokens: mints a JWT the way `keybrokerd dev`'s built-in issuer expects, from the
//! dev state directory, and writes token files atomically with mode 0600.
//!
//! Layout (a contract with the broker's dev mode):
//! - `DIR/dev-issuer/issuer.json`: `{"issuer", "audience", "kid", "subject", "namespace",
//!   "service_account"}` (all strings; unknown fields are ignored);
//! - `DIR/dev-issuer/signing-key.pem`: the issuer's PKCS#8 Ed25519 private key (PEM).
//!
//! Tokens are EdDSA JWTs (`typ=JWT`, `kid` from `issuer.json`) with `iss, sub, aud, iat, nbf,
//! exp, jti` and the Kubernetes projected-token claim `kubernetes.io` (namespace, service
//! account), so the broker's identity mapping is exercised as in production.

use std::io::Write;
use std::path::{Path, PathBuf};
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

/// An error while minting or writing a dev token. Never holds the token or key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevTokenError {
    /// A file of the dev issuer could not be read.
    #[error("cannot read {} (is this a `keybrokerd dev` state dir?): {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `issuer.json` is not what the contract says.
    #[error("invalid dev issuer file {}: {source}", path.display())]
    IssuerFile {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The signing key is not a PKCS#8 Ed25519 private key in PEM.
    #[error("invalid dev signing key {} (want a PKCS#8 Ed25519 PEM): {source}", path.display())]
    SigningKey {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// Signing failed.
    #[error("cannot sign dev token: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The requested lifetime is zero or too large.
    #[error("invalid token lifetime {0:?}: must be between 1 second and 1 year")]
    Ttl(Duration),
    /// The service account is not a Kubernetes object name.
    #[error("invalid service account {0:?}: want a DNS-1123 name such as evaluator")]
    ServiceAccount(String),
    /// The token file could not be written.
    #[error("cannot write token file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// `issuer.json`.
#[derive(Debug, Deserialize)]
struct IssuerInfo {
    issuer: String,
    audience: String,
    kid: String,
    subject: String,
    namespace: String,
    service_account: String,
}

/// JWT claims of a dev token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaim,
    /// Training job id, for brokers whose issuer sets `job_claim = "job"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<String>,
}

/// The `kubernetes.io` claim of a projected service-account token.
#[derive(Debug, Serialize, Deserialize)]
struct KubernetesClaim {
    namespace: String,
    serviceaccount: ServiceAccount,
}

/// `kubernetes.io.serviceaccount`.
#[derive(Debug, Serialize, Deserialize)]
struct ServiceAccount {
    name: String,
}

/// Longest lifetime `mint` accepts.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Mints a dev token valid for `ttl` from now, signed by the dev issuer in `state_dir`.
///
/// # Errors
/// `Read` when `issuer.json` or the signing key is missing, `IssuerFile` when `issuer.json`
/// lacks a field, `SigningKey` when the key is not PKCS#8 Ed25519, `Ttl` for a zero or
/// over-long `ttl`, `Sign` when signing fails.
pub fn mint(state_dir: &Path, ttl: Duration) -> Result<Zeroizing<String>, DevTokenError> {
    mint_for_job(state_dir, ttl, None)
}

/// Like [`mint`], with a `job` claim naming the training job (read by a broker whose issuer
/// has `job_claim = "job"`; `RevokeLeases` by job then applies to the token).
///
/// # Errors
/// As [`mint`].
pub fn mint_for_job(
    state_dir: &Path,
    ttl: Duration,
    job: Option<&str>,
) -> Result<Zeroizing<String>, DevTokenError> {
    mint_for(
        state_dir,
        ttl,
        &Workload {
            job,
            service_account: None,
        },
    )
}

/// Who a dev token speaks for, beyond the dev issuer's defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Workload<'a> {
    /// A `job` claim (see [`mint_for_job`]).
    pub job: Option<&'a str>,
    /// Another service account in the dev namespace than `issuer.json`'s: a second workload
    /// (subject `system:serviceaccount:<namespace>:<name>`), e.g. to show that one workload's
    /// attestation nonce is refused to another.
    pub service_account: Option<&'a str>,
}

/// Like [`mint`], for `workload`.
///
/// # Errors
/// As [`mint`], and `ServiceAccount` for a name that is not a DNS-1123 subdomain.
pub fn mint_for(
    state_dir: &Path,
    ttl: Duration,
    workload: &Workload<'_>,
) -> Result<Zeroizing<String>, DevTokenError> {
    let job = workload.job;
    if let Some(sa) = workload.service_account
        && !dns1123_subdomain(sa)
    {
        return Err(DevTokenError::ServiceAccount(sa.to_owned()));
    }
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(DevTokenError::Ttl(ttl));
    }
    let dir = state_dir.join(ISSUER_DIR);
    let issuer_path = dir.join(ISSUER_FILE);
    let issuer_json = read(&issuer_path)?;
    let issuer: IssuerInfo =
        serde_json::from_slice(&issuer_json).map_err(|source| DevTokenError::IssuerFile {
            path: issuer_path,
            source,
        })?;
    let key_path = dir.join(SIGNING_KEY_FILE);
    let pem = read(&key_path)?;
    let key = EncodingKey::from_ed_pem(&pem).map_err(|source| DevTokenError::SigningKey {
        path: key_path,
        source,
    })?;

    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let lifetime = i64::try_from(ttl.as_secs()).map_err(|_| DevTokenError::Ttl(ttl))?;
    let (sub, service_account) = match workload.service_account {
        Some(sa) => (
            format!("system:serviceaccount:{}:{sa}", issuer.namespace),
            sa.to_owned(),
        ),
        None => (issuer.subject, issuer.service_account),
    };
    let claims = Claims {
        iss: issuer.issuer,
        sub,
        aud: issuer.audience,
        iat: now,
        nbf: now,
        exp: now.saturating_add(lifetime.max(1)),
        jti: uuid::Uuid::new_v4().to_string(),
        kubernetes: KubernetesClaim {
            namespace: issuer.namespace,
            serviceaccount: ServiceAccount {
                name: service_account,
            },
        },
        job: job.map(str::to_owned),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(issuer.kid);
    let token = jsonwebtoken::encode(&header, &claims, &key).map_err(DevTokenError::Sign)?;
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

/// Writes `token` to `path` with mode 0600, atomically: a temporary file in the same
/// directory, flushed to disk, then renamed over `path`. Readers never see a partial token.
///
/// # Errors
/// `Write` naming `path` when the directory is not writable or the disk is full.
pub fn write_token_file(path: &Path, token: &str) -> Result<(), DevTokenError> {
    let write_err = |source| DevTokenError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4()));
    let result =
        write_new_private(&tmp, token.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        // Best effort: the temp file may not exist if creating it failed.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// Creates `path` (which must not exist) readable by the owner only, writes and syncs it.
fn write_new_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// Reads a dev-issuer file into a zeroizing buffer (it may be the private key).
fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, DevTokenError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| DevTokenError::Read {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    /// Writes a dev issuer into `dir` and returns the public key PEM.
    fn make_issuer(dir: &Path) -> anyhow::Result<String> {
        let issuer_dir = dir.join(ISSUER_DIR);
        std::fs::create_dir_all(&issuer_dir)?;
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        std::fs::write(issuer_dir.join(SIGNING_KEY_FILE), kp.serialize_pem())?;
        let info = serde_json::json!({
            "issuer": "https://dev.keybroker.local",
            "audience": "keybroker",
            "kid": "dev-1",
            "subject": "system:serviceaccount:ml:trainer",
            "namespace": "ml",
            "service_account": "trainer",
            "some_future_field": true,
        });
        std::fs::write(issuer_dir.join(ISSUER_FILE), serde_json::to_vec(&info)?)?;
        Ok(kp.public_key_pem())
    }

    #[test]
    fn minted_token_verifies_with_issuer_public_key() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let public_pem = make_issuer(dir.path())?;
        let token = mint(dir.path(), Duration::from_secs(3600))?;

        let header = jsonwebtoken::decode_header(token.as_str())?;
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some("dev-1"));
        assert_eq!(header.typ.as_deref(), Some("JWT"));

        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["keybroker"]);
        validation.set_issuer(&["https://dev.keybroker.local"]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        let key = DecodingKey::from_ed_pem(public_pem.as_bytes())?;
        let data = jsonwebtoken::decode::<Claims>(token.as_str(), &key, &validation)?;
        let c = data.claims;
        assert_eq!(c.sub, "system:serviceaccount:ml:trainer");
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
    fn missing_state_dir_names_the_file() {
        let err = mint(Path::new("/nonexistent/kb"), Duration::from_secs(60))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("/nonexistent/kb/dev-issuer/issuer.json"),
            "{err}"
        );
    }

    #[test]
    fn another_service_account_is_another_subject() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        make_issuer(dir.path())?;
        let w = Workload {
            job: None,
            service_account: Some("evaluator"),
        };
        let token = mint_for(dir.path(), Duration::from_secs(60), &w)?;
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
                mint_for(dir.path(), Duration::from_secs(60), &w),
                Err(DevTokenError::ServiceAccount(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn zero_ttl_is_rejected() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        make_issuer(dir.path())?;
        assert!(matches!(
            mint(dir.path(), Duration::ZERO),
            Err(DevTokenError::Ttl(_))
        ));
        Ok(())
    }

    #[test]
    fn token_file_is_private_and_replaced_atomically() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("token");
        write_token_file(&path, "one")?;
        write_token_file(&path, "two")?;
        assert_eq!(std::fs::read_to_string(&path)?, "two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path)?.permissions().mode() & 0o777,
                0o600
            );
        }
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }
}
