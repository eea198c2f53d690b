//! Dev-mode tokens from a `keybrokerd dev` state directory: reads the dev issuer's files and
//! mints with `keybroker_formats::dev_token` (where the layout and the claims are), and writes
//! token files atomically with mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use keybroker_formats::dev_token::{ISSUER_DIR, ISSUER_FILE, SIGNING_KEY_FILE, Workload};
use keybroker_formats::dev_token::{IssuerInfo, MintError};
use zeroize::Zeroizing;

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
    /// A file of the dev issuer is not what the contract says, or minting failed.
    #[error("{}: {source}", path.display())]
    Mint {
        /// The state dir's issuer directory.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: MintError,
    },
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

/// Mints a dev token valid for `ttl` from now, signed by the dev issuer in `state_dir`.
///
/// # Errors
/// `Read` when `issuer.json` or the signing key is missing, `Mint` when `issuer.json` lacks a
/// field, the key is not PKCS#8 Ed25519, `ttl` is zero or over-long, or signing fails.
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
    let workload = Workload {
        job,
        service_account: None,
    };
    mint_for(state_dir, ttl, &workload)
}

/// Like [`mint`], for `workload`.
///
/// # Errors
/// As [`mint`]; `Mint` also for a service account that is not a DNS-1123 subdomain.
pub fn mint_for(
    state_dir: &Path,
    ttl: Duration,
    workload: &Workload<'_>,
) -> Result<Zeroizing<String>, DevTokenError> {
    let dir = state_dir.join(ISSUER_DIR);
    let mint_err = |source| DevTokenError::Mint {
        path: dir.clone(),
        source,
    };
    let issuer = IssuerInfo::parse(&read(&dir.join(ISSUER_FILE))?).map_err(mint_err)?;
    let pem = read(&dir.join(SIGNING_KEY_FILE))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    keybroker_formats::dev_token::mint(&issuer, &pem, workload, now, ttl).map_err(mint_err)
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
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use keybroker_formats::dev_token::Claims;

    /// Writes a dev issuer into `dir` and returns the public key PEM (unknown fields in
    /// `issuer.json` are `keybroker_formats::dev_token`'s test).
    fn make_issuer(dir: &Path) -> anyhow::Result<String> {
        let issuer_dir = dir.join(ISSUER_DIR);
        std::fs::create_dir_all(&issuer_dir)?;
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        std::fs::write(issuer_dir.join(SIGNING_KEY_FILE), kp.serialize_pem())?;
        let info = IssuerInfo {
            issuer: "https://dev.keybroker.local".into(),
            audience: "keybroker".into(),
            kid: "dev-1".into(),
            subject: "system:serviceaccount:ml:trainer".into(),
            namespace: "ml".into(),
            service_account: "trainer".into(),
        };
        std::fs::write(issuer_dir.join(ISSUER_FILE), serde_json::to_vec(&info)?)?;
        Ok(kp.public_key_pem())
    }

    #[test]
    fn minted_token_verifies_with_issuer_public_key() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let public_pem = make_issuer(dir.path())?;
        let token = mint_for_job(dir.path(), Duration::from_secs(3600), Some("j-1"))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["keybroker"]);
        validation.set_issuer(&["https://dev.keybroker.local"]);
        let key = DecodingKey::from_ed_pem(public_pem.as_bytes())?;
        let c = jsonwebtoken::decode::<Claims>(token.as_str(), &key, &validation)?.claims;
        assert_eq!(c.sub, "system:serviceaccount:ml:trainer");
        assert_eq!(c.exp - c.iat, 3600);
        assert_eq!(c.job.as_deref(), Some("j-1"));
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
    fn a_broken_issuer_or_zero_ttl_names_the_issuer_dir() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        make_issuer(dir.path())?;
        let err = mint(dir.path(), Duration::ZERO).err();
        assert!(matches!(
            err,
            Some(DevTokenError::Mint {
                source: MintError::Ttl(_),
                ..
            })
        ));
        std::fs::write(dir.path().join(ISSUER_DIR).join(ISSUER_FILE), "{}")?;
        let err = mint(dir.path(), Duration::from_secs(60))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("dev-issuer") && err.contains("issuer file"),
            "{err}"
        );
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
