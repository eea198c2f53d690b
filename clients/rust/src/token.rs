//! Bearer token source: reads the token file and re-reads it when it changes, because the
//! kubelet rotates projected service-account tokens (it writes a new file in a fresh directory
//! and swaps the `..data` symlink). "Changed" means another file (device, inode) or another
//! mtime or length seen through the path, so a swap is caught even when the new file has the
//! old file's mtime (coarse timestamps, or copied with `cp -p`). The token lives in
//! `Zeroizing`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use zeroize::Zeroizing;

use crate::ClientError;

/// What identifies one version of the token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: SystemTime,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: meta.modified()?,
        })
    }
}

/// A token as read from the file, with the file's stamp when it was read.
struct Cached {
    stamp: Stamp,
    token: Zeroizing<String>,
}

/// Reads a bearer token from a file, caching it until the file's mtime changes.
#[derive(Clone)]
pub(crate) struct TokenSource {
    path: PathBuf,
    cache: Arc<Mutex<Option<Cached>>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("path", &self.path)
            .field("token", &"[redacted]")
            .finish()
    }
}

impl TokenSource {
    /// A source for `path`; nothing is read until [`TokenSource::token`].
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// The token file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The current token: the cached one when the file is unchanged, else re-read.
    ///
    /// # Errors
    /// `TokenFile` when the file is missing or unreadable, `InvalidToken` when it is empty or
    /// holds characters that cannot go into an HTTP header.
    pub(crate) async fn token(&self) -> Result<Zeroizing<String>, ClientError> {
        let io_err = |source| ClientError::TokenFile {
            path: self.path.clone(),
            source,
        };
        let meta = tokio::fs::metadata(&self.path).await.map_err(io_err)?;
        let stamp = Stamp::of(&meta).map_err(io_err)?;
        {
            let cache = self
                .cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(cached) = cache.as_ref().filter(|c| c.stamp == stamp) {
                return Ok(cached.token.clone());
            }
        }
        let raw = Zeroizing::new(tokio::fs::read(&self.path).await.map_err(io_err)?);
        let token = parse_token(&self.path, &raw)?;
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cache = Some(Cached {
            stamp,
            token: token.clone(),
        });
        Ok(token)
    }
}

/// Trims surrounding whitespace and checks the token can be sent as a header value.
fn parse_token(path: &Path, raw: &[u8]) -> Result<Zeroizing<String>, ClientError> {
    let invalid = |problem| ClientError::InvalidToken {
        path: path.to_path_buf(),
        problem,
    };
    let text = std::str::from_utf8(raw)
        .map_err(|_| invalid("is not UTF-8"))?
        .trim();
    if text.is_empty() {
        return Err(invalid("is empty"));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("holds characters not allowed in a bearer token"));
    }
    Ok(Zeroizing::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rereads_token_when_mtime_changes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n")?;
        let src = TokenSource::new(path.clone());
        assert_eq!(src.token().await?.as_str(), "first");

        std::fs::write(&path, "second")?;
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&path)?
            .set_modified(later)?;
        assert_eq!(src.token().await?.as_str(), "second");
        Ok(())
    }

    #[tokio::test]
    async fn rereads_token_swapped_in_with_the_same_mtime_like_kubelet() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("..data");
        let path = dir.path().join("token");
        let first = dir.path().join("..2026_11_26_01");
        std::fs::create_dir(&first)?;
        std::fs::write(first.join("token"), "aaaa")?;
        std::os::unix::fs::symlink(&first, &data)?;
        std::os::unix::fs::symlink("..data/token", &path)?;
        let src = TokenSource::new(path.clone());
        assert_eq!(src.token().await?.as_str(), "aaaa");

        // Rotation: a new directory, same length and mtime, then an atomic symlink swap.
        let second = dir.path().join("..2026_11_26_02");
        std::fs::create_dir(&second)?;
        std::fs::write(second.join("token"), "bbbb")?;
        let mtime = std::fs::metadata(first.join("token"))?.modified()?;
        std::fs::File::options()
            .write(true)
            .open(second.join("token"))?
            .set_modified(mtime)?;
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink(&second, &tmp)?;
        std::fs::rename(&tmp, &data)?;
        assert_eq!(src.token().await?.as_str(), "bbbb");
        Ok(())
    }

    #[tokio::test]
    async fn missing_file_names_the_path() {
        let src = TokenSource::new(PathBuf::from("/nonexistent/kb-token"));
        let err = src
            .token()
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/kb-token"), "{err}");
    }

    #[test]
    fn rejects_empty_and_non_header_tokens() {
        let p = Path::new("t");
        assert!(parse_token(p, b" \n").is_err());
        assert!(parse_token(p, b"ab cd").is_err());
        assert!(matches!(parse_token(p, b" abc.def.ghi\n"), Ok(t) if t.as_str() == "abc.def.ghi"));
    }

    #[test]
    fn debug_redacts_token() {
        let src = TokenSource::new(PathBuf::from("t"));
        assert!(format!("{src:?}").contains("[redacted]"));
    }
}
