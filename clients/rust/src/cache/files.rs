//! The cache's use by KBEF files: a new file gets its data key from the cache (one broker call
//! per key name + context per lease, however many files are written; each file still derives
//! its own AES key from a fresh random salt, so files never share a (key, nonce) pair), and
//! reading a file opens its wrapped key through the cache (many shards under one wrapped key:
//! one `Decrypt`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use ring::rand::{SecureRandom, SystemRandom};

use super::{DataKeyCache, LeasedKey};
use crate::ClientError;
use crate::file::{FileFormatError, Header, NONCE_PREFIX_LEN, SALT_LEN};

impl DataKeyCache {
    /// The header of a new file under `key` and `context` (fresh salt and nonce prefix), and
    /// the data key to encrypt it with.
    ///
    /// # Errors
    /// As [`DataKeyCache::data_key`], plus `File` for header fields out of bounds or a failing
    /// random generator.
    pub async fn new_file(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
        segment_size: u32,
    ) -> Result<(Header, Arc<LeasedKey>), ClientError> {
        let dk = self.data_key(key, context).await?;
        let rng = SystemRandom::new();
        let (mut salt, mut prefix) = ([0u8; SALT_LEN], [0u8; NONCE_PREFIX_LEN]);
        rng.fill(&mut salt).map_err(|_| FileFormatError::Random)?;
        rng.fill(&mut prefix).map_err(|_| FileFormatError::Random)?;
        let header = Header::new(segment_size, salt, prefix, key, context, dk.wrapped())?;
        Ok((header, dk))
    }

    /// The data key of the file with `header`, opened under the header's context.
    ///
    /// # Errors
    /// As [`DataKeyCache::open`], plus `MalformedResponse` when the broker opened the wrapped
    /// key under another key than the header names.
    pub async fn file_key(&self, header: &Header) -> Result<Arc<LeasedKey>, ClientError> {
        let dk = self.open(&header.wrapped_key, &header.context).await?;
        if dk.key_name() != header.key_name {
            return Err(ClientError::MalformedResponse {
                problem: "the broker opened the data key under another key than the header names",
                request_id: dk.lease_id().to_owned(),
            });
        }
        Ok(dk)
    }

    /// The lease end of `key` as a monotonic instant (for the streaming loops' lease check).
    #[must_use]
    pub fn lease_end(&self, key: &LeasedKey) -> Instant {
        let left = key.expires_at() - self.inner.clock.now();
        Instant::now() + std::time::Duration::try_from(left).unwrap_or_default()
    }
}
