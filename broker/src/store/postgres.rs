//! PostgreSQL backend of the catalog: one database shared by every broker replica (DESIGN §10).
//!
//! Every release runs the gate in PostgreSQL — in the audit log's transaction, which appends
//! its record and inserts its lease (DESIGN §6) — so a `DisableKey`, version disable,
//! destruction or lease revocation committed through any replica closes the gate on every
//! replica at the next request, with no cache to invalidate. A replica that cannot reach the database fails
//! the gate and releases nothing. Migrations (`migrations/postgres/`) run at connect under
//! sqlx's advisory lock, so replicas starting together apply them once. The statements shared
//! with SQLite are in [`super::catalog`]; what is PostgreSQL's own is the gate check
//! (`gate`), the one-statement use-count reservation (`leases`) and creation locks
//! (`creating`).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Postgres;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

mod creating;
pub(crate) mod gate;
pub(crate) mod leases;

use creating::Creating;

use super::catalog::Catalog;
use super::{
    CatalogGauges, GateOutcome, KeyRecord, KeyState, LeaseRecord, NewKey, ReleaseGate, Revocation,
    RevocationTarget, SettingsUpdate, Store, StoreError, VersionState, Who,
};

/// How long a request waits for a database connection before it is refused: short, so a lost
/// database turns into `UNAVAILABLE` quickly instead of a queue of hung requests.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The PostgreSQL catalog.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    catalog: Catalog<Postgres>,
    /// Locks of the versions this replica is creating (see `creating`).
    creating: std::sync::Arc<Creating>,
    /// Use counts reserved in blocks (one catalog write per block, not per release).
    wraps: std::sync::Arc<super::WrapCounters>,
}

impl PostgresStore {
    /// Connects with `options` (at most `max_connections`) and applies pending migrations.
    ///
    /// # Errors
    /// The database cannot be reached, the login fails, or a migration fails.
    pub async fn connect(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self {
            catalog: Catalog { pool },
            creating: std::sync::Arc::default(),
            wraps: std::sync::Arc::default(),
        })
    }

    /// The connection pool (the PostgreSQL audit log shares it).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.catalog.pool
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_key(&self, key: &NewKey) -> Result<KeyRecord, StoreError> {
        // Locked before version 1 is visible: recovery elsewhere leaves it alone.
        let lock = Creating::lock(self.pool(), &key.name, 1)
            .await?
            .ok_or_else(|| StoreError::AlreadyExists(format!("key {}", key.name)))?;
        self.catalog.insert_key(key).await?;
        self.creating.keep(&key.name, 1, lock);
        self.get_key(&key.name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key {}", key.name)))
    }

    async fn abort_create(&self, name: &str) -> Result<(), StoreError> {
        // The key row is locked in the transaction (`Dialect::LOCK_KEY`).
        self.catalog.abort_create(name).await?;
        self.creating.release(name, 1).await;
        Ok(())
    }

    async fn get_key(&self, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.catalog.get_key(name).await
    }

    async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.catalog.list_keys(prefix, after, limit).await
    }

    async fn reserve_version(&self, name: &str, version: u32, now: i64) -> Result<(), StoreError> {
        let lock = Creating::lock(self.pool(), name, version)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("key {name} version {version}")))?;
        self.catalog.reserve_version(name, version, now).await?;
        self.creating.keep(name, version, lock);
        Ok(())
    }

    async fn set_version_state(
        &self,
        name: &str,
        version: u32,
        state: VersionState,
    ) -> Result<(), StoreError> {
        let set = self.catalog.set_version_state(name, version, state).await;
        // Confirmed, or failed and left for recovery: either way this replica is done with it.
        self.creating.release(name, version).await;
        set
    }

    async fn abort_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        let aborted = self.catalog.abort_version(name, version).await;
        self.creating.release(name, version).await;
        aborted
    }

    async fn release(&self, gate: &ReleaseGate<'_>) -> Result<GateOutcome, StoreError> {
        // Only the use count, reserved a block at a time: the gate proper (key and version
        // states, revocations) runs in the audit log's transaction, on the newest data, and the
        // lease is inserted there too (`audit::pg::writer`). No row is locked per release.
        match gate.wrap_version {
            Some(v) => Ok(match self.wraps.take(self, gate.key, v).await? {
                Some(n) => GateOutcome::Open(n),
                None => GateOutcome::Closed,
            }),
            None => Ok(GateOutcome::Open(0)),
        }
    }

    async fn reserve_wraps(
        &self,
        name: &str,
        version: u32,
        block: u64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        leases::reserve_wraps(self.pool(), name, version, block).await
    }

    async fn insert_leases(&self, leases: &[(LeaseRecord, u64)]) -> Result<(), StoreError> {
        self.catalog.insert_leases(leases).await
    }

    async fn active_revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        self.catalog.active_revocations(now).await
    }

    async fn is_revoked(&self, who: &Who<'_>, now: i64) -> Result<bool, StoreError> {
        self.catalog.is_revoked(who, now).await
    }

    async fn revoke(
        &self,
        target: &RevocationTarget,
        now: i64,
        until: i64,
    ) -> Result<u32, StoreError> {
        self.catalog.revoke(target, now, until).await
    }

    async fn set_key_state(
        &self,
        name: &str,
        from: KeyState,
        to: KeyState,
        destroy_after: Option<i64>,
    ) -> Result<(), StoreError> {
        self.catalog
            .set_key_state(name, from, to, destroy_after)
            .await
    }

    async fn swap_version_state(
        &self,
        name: &str,
        version: u32,
        from: VersionState,
        to: VersionState,
    ) -> Result<(), StoreError> {
        self.catalog
            .swap_version_state(name, version, from, to)
            .await
    }

    async fn update_settings(&self, name: &str, update: &SettingsUpdate) -> Result<(), StoreError> {
        self.catalog.update_settings(name, update).await
    }

    async fn cancel_destruction(&self, name: &str, now: i64) -> Result<(), StoreError> {
        self.catalog.cancel_destruction(name, now).await
    }

    async fn due_destructions(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError> {
        self.catalog.due_destructions(now).await
    }

    async fn mark_destroyed(&self, name: &str) -> Result<(), StoreError> {
        self.catalog.mark_destroyed(name).await
    }

    async fn due_rotations(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError> {
        self.catalog.due_rotations(now).await
    }

    async fn claim_rotation(
        &self,
        name: &str,
        version: u32,
        due: i64,
        next: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let lock = Creating::lock(self.pool(), name, version)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("key {name} version {version}")))?;
        self.catalog
            .claim_rotation(name, version, (due, next), now)
            .await?;
        self.creating.keep(name, version, lock);
        Ok(())
    }

    async fn pending_versions(&self) -> Result<Vec<(String, u32)>, StoreError> {
        // Only versions no replica is creating right now (their creation lock is free).
        let candidates = self.catalog.pending_versions().await?;
        self.creating.claim_pending(self.pool(), candidates).await
    }

    async fn next_deadline(&self) -> Result<Option<i64>, StoreError> {
        self.catalog.next_deadline().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.catalog.ping().await
    }

    async fn gauges(&self, now: i64) -> Result<CatalogGauges, StoreError> {
        self.catalog.gauges(now).await
    }
}
