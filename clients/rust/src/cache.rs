//! `DataKeyCache`: plaintext data keys kept in memory for exactly their lease, so a job that
//! writes a checkpoint every few minutes (or reads many shards under one wrapped key) asks the
//! broker once per lease rather than once per file.
//!
//! Rules:
//! - Entries are keyed by key name + encryption context (fresh keys) or wrapped key + context
//!   (opened keys), so a key is never used under another context.
//! - An entry is served until three quarters of its lease have passed; the next use then asks
//!   the broker again ("refresh before expiry"). If that refresh fails with a retryable code
//!   (after the client's own retries) and the old lease still runs, the old key is served. Any
//!   other failure — `PERMISSION_DENIED` after `RevokeLeases` for the job, a disabled key —
//!   evicts the entry and is returned: the cache never hides a broker's refusal.
//! - At lease end the entry is dropped, and its `Zeroizing` buffer wiped, by the next use or by
//!   a background sweep (once a second, while a tokio runtime runs). Dropping the cache wipes
//!   every entry; a caller still holding a [`LeasedKey`] wipes it when it drops it.
//! - Keys live only in process memory; nothing is written to disk. (They are not `mlock`ed:
//!   run jobs without swap, or with encrypted swap.)
//!
//! Lease end is judged on the cache's [`Clock`] as the earlier of the broker's `expires_at` and
//! "received + ttl", so a client clock behind the broker's does not stretch a lease.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::{Client, ClientError};

/// Wall-clock source of the cache; tests substitute a manual one.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A plaintext data key under a running lease. Zeroized when the last holder drops it.
pub struct LeasedKey {
    plaintext: Zeroizing<Vec<u8>>,
    wrapped: Vec<u8>,
    key_name: String,
    key_version: u32,
    lease_id: String,
    expires_at: OffsetDateTime,
}

impl fmt::Debug for LeasedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasedKey")
            .field("plaintext", &"[redacted]")
            .field("key_name", &self.key_name)
            .field("key_version", &self.key_version)
            .field("lease_id", &self.lease_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl LeasedKey {
    /// The 32-byte data key.
    #[must_use]
    pub fn plaintext(&self) -> &[u8] {
        &self.plaintext
    }
    /// The data key as wrapped by the broker (store it with the data).
    #[must_use]
    pub fn wrapped(&self) -> &[u8] {
        &self.wrapped
    }
    /// The broker key that wrapped it.
    #[must_use]
    pub fn key_name(&self) -> &str {
        &self.key_name
    }
    /// The key version that wrapped it.
    #[must_use]
    pub fn key_version(&self) -> u32 {
        self.key_version
    }
    /// The lease id.
    #[must_use]
    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }
    /// When the lease ends (on the cache's clock): the key must not be used from then on.
    #[must_use]
    pub fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }
}

/// What an entry is found under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    Fresh(String, BTreeMap<String, String>),
    Opened(Vec<u8>, BTreeMap<String, String>),
}

struct Entry {
    key: Arc<LeasedKey>,
    refresh_at: OffsetDateTime,
}

struct Inner {
    client: Client,
    clock: Arc<dyn Clock>,
    ttl: Option<Duration>,
    entries: Mutex<HashMap<Slot, Entry>>,
    fetches: AtomicU64,
}

impl Inner {
    fn entries(&self) -> MutexGuard<'_, HashMap<Slot, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn purge_expired(&self) -> usize {
        let now = self.clock.now();
        let mut entries = self.entries();
        let before = entries.len();
        entries.retain(|_, e| now < e.key.expires_at);
        before - entries.len()
    }
}

/// A lease-aware cache of data keys in front of a [`Client`]. Cheap to clone.
#[derive(Clone)]
pub struct DataKeyCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for DataKeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKeyCache")
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl DataKeyCache {
    /// A cache on the system clock asking for the broker's default lease length.
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self::with_clock(client, None, Arc::new(SystemClock))
    }

    /// A cache asking for leases of `ttl` (`None` = broker default; the broker caps it) and
    /// judging lease ends on `clock`. Starts the background sweep when called inside a tokio
    /// runtime.
    #[must_use]
    pub fn with_clock(client: Client, ttl: Option<Duration>, clock: Arc<dyn Clock>) -> Self {
        let inner = Arc::new(Inner {
            client,
            clock,
            ttl,
            entries: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// A data key for encrypting under `key` with `context`: the cached one while it is fresh,
    /// else a new one from `GenerateDataKey`.
    ///
    /// # Errors
    /// The broker's refusal (the entry is evicted first), token and transport errors,
    /// `MalformedResponse` for a lease without an end.
    pub async fn data_key(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<Arc<LeasedKey>, ClientError> {
        let slot = Slot::Fresh(key.to_owned(), context.clone());
        let inner = &self.inner;
        self.get_or_fetch(slot, async {
            let dk = inner
                .client
                .generate_data_key(key, context, inner.ttl)
                .await?;
            Ok((
                dk.plaintext,
                dk.ciphertext,
                key.to_owned(),
                dk.key_version,
                dk.lease_id,
                dk.expires_at,
                dk.lease_ttl,
            ))
        })
        .await
    }

    /// The plaintext of the wrapped data key `wrapped` under `context`: the cached one while it
    /// is fresh, else opened again with `Decrypt`.
    ///
    /// # Errors
    /// As [`DataKeyCache::data_key`].
    pub async fn open(
        &self,
        wrapped: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Arc<LeasedKey>, ClientError> {
        let slot = Slot::Opened(wrapped.to_vec(), context.clone());
        let inner = &self.inner;
        self.get_or_fetch(slot, async {
            let dk = inner.client.decrypt(wrapped, context, inner.ttl).await?;
            Ok((
                dk.plaintext,
                wrapped.to_vec(),
                dk.key,
                dk.key_version,
                dk.lease_id,
                dk.expires_at,
                dk.lease_ttl,
            ))
        })
        .await
    }

    async fn get_or_fetch(
        &self,
        slot: Slot,
        fetch: impl Future<Output = Result<Fetched, ClientError>>,
    ) -> Result<Arc<LeasedKey>, ClientError> {
        let inner = &self.inner;
        inner.purge_expired();
        let stale = {
            let entries = inner.entries();
            match entries.get(&slot) {
                Some(e) if inner.clock.now() < e.refresh_at => return Ok(e.key.clone()),
                Some(e) => Some(e.key.clone()),
                None => None,
            }
        };
        inner.fetches.fetch_add(1, Ordering::Relaxed);
        let received = inner.clock.now();
        match fetch.await {
            Ok((plaintext, wrapped, key_name, key_version, lease_id, expires_at, ttl)) => {
                let end = match (expires_at, ttl) {
                    (Some(at), Some(ttl)) => at.min(received + ttl),
                    (Some(at), None) => at,
                    (None, Some(ttl)) => received + ttl,
                    (None, None) => {
                        return Err(ClientError::MalformedResponse {
                            problem: "lease without an end",
                            request_id: lease_id,
                        });
                    }
                };
                let key = Arc::new(LeasedKey {
                    plaintext,
                    wrapped,
                    key_name,
                    key_version,
                    lease_id,
                    expires_at: end,
                });
                let refresh_at = received + (end - received) * 3 / 4;
                inner.entries().insert(
                    slot,
                    Entry {
                        key: key.clone(),
                        refresh_at,
                    },
                );
                Ok(key)
            }
            Err(e) => match stale {
                Some(old) if e.is_retryable() && inner.clock.now() < old.expires_at => Ok(old),
                _ => {
                    inner.entries().remove(&slot);
                    Err(e)
                }
            },
        }
    }

    /// Drops (and wipes) every entry whose lease has ended; returns how many.
    pub fn purge_expired(&self) -> usize {
        self.inner.purge_expired()
    }

    /// Drops (and wipes) every entry, e.g. at job teardown.
    pub fn clear(&self) {
        self.inner.entries().clear();
    }

    /// Entries held now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.entries().len()
    }

    /// True when no entry is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Broker requests made so far (a miss, a refresh or an expiry each count one).
    #[must_use]
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }
}

/// Plaintext, wrapped key, key name, version, lease id, broker expiry, lease length.
type Fetched = (
    Zeroizing<Vec<u8>>,
    Vec<u8>,
    String,
    u32,
    String,
    Option<OffsetDateTime>,
    Option<Duration>,
);

/// Wipes expired entries once a second until the cache is dropped.
async fn sweep(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.purge_expired();
    }
}

mod files;
#[cfg(test)]
mod tests;
