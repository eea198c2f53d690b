//! The single-node catalog's key cache, for the release path.
//!
//! Every GenerateDataKey/Decrypt reads its key record for policy (two queries) before the
//! release gate; under load that was ≈9 % of the broker's CPU. With SQLite one broker process
//! owns the catalog, so every write to it passes through this wrapper: each write bumps a
//! generation number *after* it finished, and a cached record is only served while its
//! generation is current. A record read before a write is therefore never served after it
//! (the reader stamps the record with the generation it saw before reading).
//!
//! What may lag is a version's use count (`wrap_count`): the release gate itself increments it
//! and does not bump the generation, or the cache would never hit. Nothing is decided on the
//! cached count alone: the gate enforces the GCM use limit in the same statement that counts
//! the use, and re-checks key state, version state and revocations on the newest data.
//! Admin reads (`get_key`) always go to the database.
//!
//! Not for PostgreSQL: other replicas write that catalog.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    CatalogGauges, GateOutcome, KeyRecord, KeyState, NewKey, ReleaseGate, RevocationTarget,
    SettingsUpdate, Store, StoreError, VersionState, Who,
};

/// Most key records cached; a full cache starts over.
const MAX_ENTRIES: usize = 4096;

/// A [`Store`] whose release-path reads are cached.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    generation: AtomicU64,
    entries: Mutex<HashMap<String, (u64, KeyRecord)>>,
}

impl std::fmt::Debug for CachedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedStore")
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl CachedStore {
    /// Wraps `inner`, which no other process may write.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            generation: AtomicU64::new(0),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// After any catalog write (finished or failed): no record cached before it is served.
    fn written<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut map) = self.entries.lock() {
            map.clear();
        }
        result
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn get_key_for_release(&self, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        let seen = self.generation.load(Ordering::Acquire);
        if let Ok(map) = self.entries.lock()
            && let Some((generation, record)) = map.get(name)
            && *generation == seen
        {
            return Ok(Some(record.clone()));
        }
        let record = self.inner.get_key(name).await?;
        if let Some(r) = &record
            && let Ok(mut map) = self.entries.lock()
        {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(name.to_owned(), (seen, r.clone()));
        }
        Ok(record)
    }

    async fn create_key(&self, key: &NewKey) -> Result<KeyRecord, StoreError> {
        self.written(self.inner.create_key(key).await)
    }

    async fn abort_create(&self, name: &str) -> Result<(), StoreError> {
        self.written(self.inner.abort_create(name).await)
    }

    async fn get_key(&self, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get_key(name).await
    }

    async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list_keys(prefix, after, limit).await
    }

    async fn reserve_version(&self, name: &str, version: u32, now: i64) -> Result<(), StoreError> {
        self.written(self.inner.reserve_version(name, version, now).await)
    }

    async fn set_version_state(
        &self,
        name: &str,
        version: u32,
        state: VersionState,
    ) -> Result<(), StoreError> {
        self.written(self.inner.set_version_state(name, version, state).await)
    }

    async fn abort_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        self.written(self.inner.abort_version(name, version).await)
    }

    async fn release(&self, gate: &ReleaseGate<'_>) -> Result<GateOutcome, StoreError> {
        // Counts uses only; see the module header.
        self.inner.release(gate).await
    }

    async fn is_revoked(&self, who: &Who<'_>, now: i64) -> Result<bool, StoreError> {
        self.inner.is_revoked(who, now).await
    }

    async fn revoke(
        &self,
        target: &RevocationTarget,
        now: i64,
        until: i64,
    ) -> Result<u32, StoreError> {
        self.written(self.inner.revoke(target, now, until).await)
    }

    async fn set_key_state(
        &self,
        name: &str,
        from: KeyState,
        to: KeyState,
        destroy_after: Option<i64>,
    ) -> Result<(), StoreError> {
        let result = self
            .inner
            .set_key_state(name, from, to, destroy_after)
            .await;
        self.written(result)
    }

    async fn swap_version_state(
        &self,
        name: &str,
        version: u32,
        from: VersionState,
        to: VersionState,
    ) -> Result<(), StoreError> {
        let result = self.inner.swap_version_state(name, version, from, to).await;
        self.written(result)
    }

    async fn update_settings(&self, name: &str, update: &SettingsUpdate) -> Result<(), StoreError> {
        self.written(self.inner.update_settings(name, update).await)
    }

    async fn cancel_destruction(&self, name: &str, now: i64) -> Result<(), StoreError> {
        self.written(self.inner.cancel_destruction(name, now).await)
    }

    async fn due_destructions(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.due_destructions(now).await
    }

    async fn mark_destroyed(&self, name: &str) -> Result<(), StoreError> {
        self.written(self.inner.mark_destroyed(name).await)
    }

    async fn due_rotations(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.due_rotations(now).await
    }

    async fn claim_rotation(
        &self,
        name: &str,
        version: u32,
        due: i64,
        next: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let result = self
            .inner
            .claim_rotation(name, version, due, next, now)
            .await;
        self.written(result)
    }

    async fn pending_versions(&self) -> Result<Vec<(String, u32)>, StoreError> {
        self.inner.pending_versions().await
    }

    async fn next_deadline(&self) -> Result<Option<i64>, StoreError> {
        self.inner.next_deadline().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn gauges(&self, now: i64) -> Result<CatalogGauges, StoreError> {
        self.inner.gauges(now).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::{Purpose, SqliteStore};

    async fn store() -> CachedStore {
        let s = CachedStore::new(Arc::new(SqliteStore::in_memory().await.unwrap()));
        s.create_key(&NewKey {
            name: "k".into(),
            purpose: Purpose::DataKey,
            labels: BTreeMap::new(),
            hsm_id: "hsm-a".into(),
            created_at: 1,
            rotation_period_secs: None,
            next_rotation_at: None,
        })
        .await
        .unwrap();
        s.set_version_state("k", 1, VersionState::Enabled)
            .await
            .unwrap();
        s
    }

    fn wrap() -> ReleaseGate<'static> {
        ReleaseGate {
            key: "k",
            wrap_version: Some(1),
            open_version: None,
            lease: None,
            who: Who {
                issuer: "iss",
                subject: "sub",
                job_id: None,
            },
            now: 10,
        }
    }

    async fn cached(s: &CachedStore) -> KeyRecord {
        s.get_key_for_release("k").await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn only_use_counts_lag_and_any_write_ends_the_cached_record() {
        let s = store().await;
        assert_eq!(cached(&s).await.versions[0].wrap_count, 0);
        assert_eq!(s.release(&wrap()).await.unwrap(), GateOutcome::Open(1));
        // Served from the cache: the count lags; the admin read does not.
        assert_eq!(cached(&s).await.versions[0].wrap_count, 0);
        let fresh = s.get_key("k").await.unwrap().unwrap();
        assert_eq!(fresh.versions[0].wrap_count, 1);
        // A state change through the store is seen at once.
        s.set_key_state("k", KeyState::Enabled, KeyState::Disabled, None)
            .await
            .unwrap();
        assert_eq!(cached(&s).await.state, KeyState::Disabled);
        s.set_key_state("k", KeyState::Disabled, KeyState::Enabled, None)
            .await
            .unwrap();
        // And so is a new version.
        s.reserve_version("k", 2, 5).await.unwrap();
        assert_eq!(cached(&s).await.versions.len(), 2);
        s.set_version_state("k", 2, VersionState::Enabled)
            .await
            .unwrap();
        assert_eq!(cached(&s).await.primary_version(), Some(2));
    }

    #[tokio::test]
    async fn a_failed_write_also_ends_the_cached_record() {
        let s = store().await;
        let _ = cached(&s).await;
        let before = s.generation.load(Ordering::Acquire);
        // Wrong `from` state: refused, but the generation still moves.
        assert!(
            s.set_key_state("k", KeyState::Disabled, KeyState::Enabled, None)
                .await
                .is_err()
        );
        assert_eq!(s.generation.load(Ordering::Acquire), before + 1);
    }

    #[tokio::test]
    async fn unknown_keys_are_not_cached() {
        let s = store().await;
        assert!(s.get_key_for_release("nope").await.unwrap().is_none());
        assert_eq!(s.entries.lock().unwrap().len(), 0);
    }
}
