//! The single-node catalog's in-memory view and release gate (DESIGN §6).
//!
//! With SQLite one broker process owns the catalog, so every write to it passes through this
//! wrapper, and the release path needs no catalog write: the gate checks key state, version
//! states, `min_decryption_version` and revocations against the view, and use counts are
//! reserved in blocks ([`super::WrapCounters`]). The audit record, appended after the gate and
//! before anything leaves, is the one durable write of a release; the lease row follows it in
//! the background (`keys::leases`).
//!
//! The view is kept exact by generations: every write bumps a generation number before it
//! starts *and* when it ends (on a drop guard, so a cancelled call bumps too), and a cached
//! record or revocation list is served only while the generation it was read under is current.
//! A read made before or during a write is therefore never served after it, and an admin call
//! (`DisableKey`, `RevokeLeases`, …) that has returned is in force for the next request.
//! The cached records' `wrap_count` is not used: counts live in the counters.
//! Admin reads (`get_key`) always go to the database.
//!
//! Not for PostgreSQL: other replicas write that catalog.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    CatalogGauges, GateOutcome, KeyRecord, KeyState, LeaseRecord, NewKey, ReleaseGate, Revocation,
    RevocationTarget, SettingsUpdate, Store, StoreError, VersionState, Who, WrapCounters,
};

/// Most key records cached; a full cache starts over.
const MAX_ENTRIES: usize = 4096;

/// A [`Store`] whose release-path reads are cached.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    generation: AtomicU64,
    entries: Mutex<HashMap<String, (u64, KeyRecord)>>,
    /// Revocations in force, with the generation they were read under.
    revocations: Mutex<Option<(u64, Arc<Vec<Revocation>>)>>,
    wraps: WrapCounters,
}

/// Bumps the generation when dropped: a write cancelled after its commit still ends the view.
struct Bump<'a>(&'a CachedStore);

impl Drop for Bump<'_> {
    fn drop(&mut self) {
        self.0.invalidate();
    }
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
            revocations: Mutex::new(None),
            wraps: WrapCounters::default(),
        }
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut map) = self.entries.lock() {
            map.clear();
        }
        if let Ok(mut r) = self.revocations.lock() {
            *r = None;
        }
    }

    /// Runs a catalog write: nothing read before it or while it runs is served after it,
    /// whether it succeeds, fails or is cancelled.
    async fn written<T>(
        &self,
        write: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.invalidate();
        let _after = Bump(self);
        write.await
    }

    /// Whether a revocation in force at `now` covers `who`, from the view.
    async fn revoked(&self, who: &Who<'_>, now: i64) -> Result<bool, StoreError> {
        let seen = self.generation.load(Ordering::Acquire);
        let cached = self.revocations.lock().ok().and_then(|r| {
            r.as_ref()
                .filter(|(g, _)| *g == seen)
                .map(|(_, l)| l.clone())
        });
        let list = match cached {
            Some(l) => l,
            None => {
                let l = Arc::new(self.inner.active_revocations(now).await?);
                if let Ok(mut r) = self.revocations.lock() {
                    *r = Some((seen, l.clone()));
                }
                l
            }
        };
        Ok(list.iter().any(|r| r.covers(who, now)))
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
        self.written(self.inner.create_key(key)).await
    }

    async fn abort_create(&self, name: &str) -> Result<(), StoreError> {
        self.written(self.inner.abort_create(name)).await
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
        self.written(self.inner.reserve_version(name, version, now))
            .await
    }

    async fn set_version_state(
        &self,
        name: &str,
        version: u32,
        state: VersionState,
    ) -> Result<(), StoreError> {
        self.written(self.inner.set_version_state(name, version, state))
            .await
    }

    async fn abort_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        self.written(self.inner.abort_version(name, version)).await
    }

    async fn release(&self, gate: &ReleaseGate<'_>) -> Result<GateOutcome, StoreError> {
        let Some(key) = self.get_key_for_release(gate.key).await? else {
            return Ok(GateOutcome::Closed);
        };
        if key.state != KeyState::Enabled {
            return Ok(GateOutcome::Closed);
        }
        let enabled = |v: u32| {
            key.version(v)
                .is_some_and(|r| r.state == VersionState::Enabled)
        };
        if let Some(v) = gate.open_version
            && (!enabled(v) || v < key.min_decryption_version)
        {
            return Ok(GateOutcome::Closed);
        }
        if gate.wrap_version.is_some_and(|v| !enabled(v)) {
            return Ok(GateOutcome::Closed);
        }
        if self.revoked(&gate.who, gate.now).await? {
            return Ok(GateOutcome::Closed);
        }
        let count = match gate.wrap_version {
            Some(v) => match self.wraps.take(self.inner.as_ref(), gate.key, v).await? {
                Some(n) => n,
                None => return Ok(GateOutcome::Closed),
            },
            None => 0,
        };
        Ok(GateOutcome::Open(count))
    }

    async fn reserve_wraps(
        &self,
        name: &str,
        version: u32,
        block: u64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        self.inner.reserve_wraps(name, version, block).await
    }

    async fn insert_leases(&self, leases: &[(LeaseRecord, u64)]) -> Result<(), StoreError> {
        self.inner.insert_leases(leases).await
    }

    async fn active_revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        self.inner.active_revocations(now).await
    }

    async fn is_revoked(&self, who: &Who<'_>, now: i64) -> Result<bool, StoreError> {
        self.revoked(who, now).await
    }

    async fn revoke(
        &self,
        target: &RevocationTarget,
        now: i64,
        until: i64,
    ) -> Result<u32, StoreError> {
        self.written(self.inner.revoke(target, now, until)).await
    }

    async fn set_key_state(
        &self,
        name: &str,
        from: KeyState,
        to: KeyState,
        destroy_after: Option<i64>,
    ) -> Result<(), StoreError> {
        self.written(self.inner.set_key_state(name, from, to, destroy_after))
            .await
    }

    async fn swap_version_state(
        &self,
        name: &str,
        version: u32,
        from: VersionState,
        to: VersionState,
    ) -> Result<(), StoreError> {
        self.written(self.inner.swap_version_state(name, version, from, to))
            .await
    }

    async fn update_settings(&self, name: &str, update: &SettingsUpdate) -> Result<(), StoreError> {
        self.written(self.inner.update_settings(name, update)).await
    }

    async fn cancel_destruction(&self, name: &str, now: i64) -> Result<(), StoreError> {
        self.written(self.inner.cancel_destruction(name, now)).await
    }

    async fn due_destructions(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.due_destructions(now).await
    }

    async fn mark_destroyed(&self, name: &str) -> Result<(), StoreError> {
        self.written(self.inner.mark_destroyed(name)).await
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
        self.written(self.inner.claim_rotation(name, version, due, next, now))
            .await
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
        store_over(Arc::new(SqliteStore::in_memory().await.unwrap())).await
    }

    /// A cache over `inner` holding key `k` with version 1 enabled.
    async fn store_over(inner: Arc<SqliteStore>) -> CachedStore {
        let s = CachedStore::new(inner);
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
        assert_eq!(s.release(&wrap()).await.unwrap(), GateOutcome::Open(2));
        // Served from the cache: the count lags; the admin read shows the reserved block.
        assert_eq!(cached(&s).await.versions[0].wrap_count, 0);
        let fresh = s.get_key("k").await.unwrap().unwrap();
        assert_eq!(fresh.versions[0].wrap_count, crate::store::WRAP_BLOCK);
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
        // Wrong `from` state: refused, but the generation still moves (before and after).
        assert!(
            s.set_key_state("k", KeyState::Disabled, KeyState::Enabled, None)
                .await
                .is_err()
        );
        assert_eq!(s.generation.load(Ordering::Acquire), before + 2);
    }

    #[tokio::test]
    async fn a_cancelled_write_still_ends_the_cached_record() {
        let s = store().await;
        let _ = cached(&s).await;
        let before = s.generation.load(Ordering::Acquire);
        // A write that never finishes (cancelled by its caller after it started).
        let w = s.written(std::future::pending::<Result<(), StoreError>>());
        let mut w = Box::pin(w);
        assert!(futures_poll_once(w.as_mut()).is_pending());
        let mid = s.generation.load(Ordering::Acquire);
        assert_eq!(mid, before + 1, "bumped before the write starts");
        drop(w);
        assert_eq!(
            s.generation.load(Ordering::Acquire),
            before + 2,
            "and when it is dropped"
        );
    }

    fn futures_poll_once<F: std::future::Future>(
        f: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        f.poll(&mut cx)
    }

    #[tokio::test]
    async fn the_in_memory_gate_closes_at_once_after_each_admin_write() {
        let s = store().await;
        let open = |r: GateOutcome| matches!(r, GateOutcome::Open(_));
        assert!(open(s.release(&wrap()).await.unwrap()));
        s.set_key_state("k", KeyState::Enabled, KeyState::Disabled, None)
            .await
            .unwrap();
        assert_eq!(s.release(&wrap()).await.unwrap(), GateOutcome::Closed);
        s.set_key_state("k", KeyState::Disabled, KeyState::Enabled, None)
            .await
            .unwrap();
        assert!(open(s.release(&wrap()).await.unwrap()));
        // A revocation of the caller's principal, and one of its job.
        s.revoke(
            &RevocationTarget::Principal {
                issuer: String::new(),
                subject: "sub".into(),
            },
            10,
            100,
        )
        .await
        .unwrap();
        assert_eq!(s.release(&wrap()).await.unwrap(), GateOutcome::Closed);
        let mut later = wrap();
        later.now = 100;
        assert!(
            open(s.release(&later).await.unwrap()),
            "the revocation ended"
        );
        let mut job = wrap();
        job.who.job_id = Some("j1");
        s.revoke(&RevocationTarget::Job("j1".into()), 10, 200)
            .await
            .unwrap();
        assert_eq!(s.release(&job).await.unwrap(), GateOutcome::Closed);
        // A disabled version: wrapping under it and opening it are both closed.
        s.swap_version_state("k", 1, VersionState::Enabled, VersionState::Disabled)
            .await
            .unwrap();
        assert_eq!(s.release(&wrap()).await.unwrap(), GateOutcome::Closed);
        let mut opening = wrap();
        opening.wrap_version = None;
        opening.open_version = Some(1);
        assert_eq!(s.release(&opening).await.unwrap(), GateOutcome::Closed);
    }

    #[tokio::test]
    async fn use_counts_are_reserved_a_block_at_a_time_and_a_restart_forfeits_the_rest() {
        let inner = Arc::new(SqliteStore::in_memory().await.unwrap());
        let s = store_over(inner.clone()).await;
        for n in 1..=3 {
            assert_eq!(s.release(&wrap()).await.unwrap(), GateOutcome::Open(n));
        }
        let block = crate::store::WRAP_BLOCK;
        let stored = |st: Arc<SqliteStore>| async move {
            st.get_key("k").await.unwrap().unwrap().versions[0].wrap_count
        };
        assert_eq!(
            stored(inner.clone()).await,
            block,
            "one write for the block"
        );
        // A new process over the same catalog: the rest of the block is never reused.
        let again = CachedStore::new(inner.clone());
        assert_eq!(
            again.release(&wrap()).await.unwrap(),
            GateOutcome::Open(block + 1)
        );
        assert_eq!(stored(inner.clone()).await, 2 * block);
        // At the GCM limit the gate closes.
        sqlx_limit(&inner).await;
        let last = CachedStore::new(inner.clone());
        assert_eq!(last.release(&wrap()).await.unwrap(), GateOutcome::Closed);
    }

    async fn sqlx_limit(inner: &SqliteStore) {
        inner
            .reserve_wraps("k", 1, u64::MAX)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn unknown_keys_are_not_cached() {
        let s = store().await;
        assert!(s.get_key_for_release("nope").await.unwrap().is_none());
        assert_eq!(s.entries.lock().unwrap().len(), 0);
    }
}
