//! SQLite backend of the catalog: the embedded single-node default.
//!
//! WAL mode with `synchronous=FULL`: a lease row is durable before the plaintext it covers
//! leaves the broker; release gates are group-committed (one fsync per batch, see `group`).
//! Migrations are embedded and run at open. The statements shared with PostgreSQL are in
//! [`super::catalog`]; what is SQLite's own is the gate (`gate`, `group`) and the use-count
//! reservation (`leases`).

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::Sqlite;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

mod gate;
mod group;
mod leases;

use super::catalog::Catalog;
use super::group::GroupCommit;
use super::{
    CatalogGauges, GateOutcome, KeyRecord, KeyState, LeaseRecord, NewKey, ReleaseGate, Revocation,
    RevocationTarget, SettingsUpdate, Store, StoreError, VersionState, Who,
};

/// The SQLite catalog.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    catalog: Catalog<Sqlite>,
    /// One connection with `synchronous=NORMAL`, for lease rows written after their audit
    /// record (the audit log is their durable record).
    leases: Catalog<Sqlite>,
    /// The release gate's group commit.
    group: GroupCommit,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `path` and applies migrations.
    ///
    /// # Errors
    /// The file cannot be opened or a migration fails.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        let leases = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.synchronous(SqliteSynchronous::Normal))
            .await?;
        let group = GroupCommit::start(group::SqliteBatch(pool.clone()));
        Ok(Self {
            catalog: Catalog { pool },
            leases: Catalog { pool: leases },
            group,
        })
    }

    /// An in-memory catalog (unit tests).
    ///
    /// # Errors
    /// Migration failures.
    pub async fn in_memory() -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite::memory:")?.foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        let group = GroupCommit::start(group::SqliteBatch(pool.clone()));
        let catalog = Catalog { pool };
        Ok(Self {
            leases: catalog.clone(),
            catalog,
            group,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_key(&self, key: &NewKey) -> Result<KeyRecord, StoreError> {
        self.catalog.insert_key(key).await?;
        self.get_key(&key.name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key {}", key.name)))
    }

    async fn abort_create(&self, name: &str) -> Result<(), StoreError> {
        self.catalog.abort_create(name).await
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
        self.catalog.reserve_version(name, version, now).await
    }

    async fn set_version_state(
        &self,
        name: &str,
        version: u32,
        state: VersionState,
    ) -> Result<(), StoreError> {
        self.catalog.set_version_state(name, version, state).await
    }

    async fn abort_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        self.catalog.abort_version(name, version).await
    }

    async fn release(&self, gate: &ReleaseGate<'_>) -> Result<GateOutcome, StoreError> {
        self.group.release(gate).await
    }

    async fn reserve_wraps(
        &self,
        name: &str,
        version: u32,
        block: u64,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        leases::reserve_wraps(&self.catalog.pool, name, version, block).await
    }

    async fn insert_leases(&self, leases: &[(LeaseRecord, u64)]) -> Result<(), StoreError> {
        self.leases.insert_leases(leases).await
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
        self.catalog
            .claim_rotation(name, version, (due, next), now)
            .await
    }

    async fn pending_versions(&self) -> Result<Vec<(String, u32)>, StoreError> {
        self.catalog.pending_versions().await
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

#[cfg(test)]
mod tests;
