//! SQLite backend of the catalog: the embedded single-node default.
//!
//! WAL mode with `synchronous=FULL`: a lease row is durable before the plaintext it covers
//! leaves the broker; release gates are group-committed (one fsync per batch, see `group`).
//! Migrations are embedded and run at open.

use std::path::Path;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

mod gate;
mod gauges;
mod group;
mod leases;
mod lifecycle;

use super::group::GroupCommit;
use super::rows::{
    is_unique_violation, key_from_row, select_keys, select_versions, version_from_row,
};
use super::{
    CatalogGauges, GateOutcome, KeyRecord, KeyState, LeaseRecord, NewKey, ReleaseGate, Revocation,
    RevocationTarget, SettingsUpdate, Store, StoreError, VersionRecord, VersionState, Who,
};

/// The SQLite catalog.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection with `synchronous=NORMAL`, for lease rows written after their audit
    /// record (the audit log is their durable record).
    leases: SqlitePool,
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
            pool,
            leases,
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
        Ok(Self {
            leases: pool.clone(),
            pool,
            group,
        })
    }

    async fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let rows = sqlx::query(select_versions!("WHERE key_name = ?1 ORDER BY version"))
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(version_from_row).collect()
    }

    async fn records(&self, rows: &[SqliteRow]) -> Result<Vec<KeyRecord>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.with_versions(row).await?);
        }
        Ok(out)
    }

    async fn with_versions(&self, row: &SqliteRow) -> Result<KeyRecord, StoreError> {
        let mut key = key_from_row(row)?;
        key.versions = self.versions(&key.name).await?;
        Ok(key)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_key(&self, key: &NewKey) -> Result<KeyRecord, StoreError> {
        let labels = serde_json::to_string(&key.labels).map_err(|e| StoreError::Corrupt {
            field: "keys.labels",
            problem: e.to_string(),
        })?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO keys (name, purpose, state, labels, hsm_id, created_at, \
             min_decryption_version, rotation_period_secs, next_rotation_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8)",
        )
        .bind(&key.name)
        .bind(key.purpose.as_db())
        .bind(KeyState::Enabled.as_db())
        .bind(&labels)
        .bind(&key.hsm_id)
        .bind(key.created_at)
        .bind(key.rotation_period_secs)
        .bind(key.next_rotation_at)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::AlreadyExists(format!("key {}", key.name)));
            }
            other => other?,
        };
        sqlx::query(
            "INSERT INTO key_versions (key_name, version, state, created_at) VALUES (?1, 1, ?2, ?3)",
        )
        .bind(&key.name)
        .bind(VersionState::PendingCreate.as_db())
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.get_key(&key.name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key {}", key.name)))
    }

    async fn abort_create(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let others: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM key_versions WHERE key_name = ?1 AND state != ?2",
        )
        .bind(name)
        .bind(VersionState::PendingCreate.as_db())
        .fetch_one(&mut *tx)
        .await?;
        if others != 0 {
            return Err(StoreError::Conflict(format!("key {name}")));
        }
        sqlx::query("DELETE FROM key_versions WHERE key_name = ?1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM keys WHERE name = ?1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_key(&self, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(select_keys!("WHERE name = ?1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(self.with_versions(&row).await?)),
            None => Ok(None),
        }
    }

    async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        // Prefix match by range, not LIKE: names may contain `_`, which LIKE treats as a wildcard.
        let upper = format!("{prefix}\u{10FFFF}");
        let rows = sqlx::query(select_keys!(
            "WHERE name >= ?1 AND name < ?2 AND name > ?3 ORDER BY name LIMIT ?4"
        ))
        .bind(prefix)
        .bind(&upper)
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        self.records(&rows).await
    }

    async fn reserve_version(&self, name: &str, version: u32, now: i64) -> Result<(), StoreError> {
        let res = sqlx::query(
            "INSERT INTO key_versions (key_name, version, state, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(VersionState::PendingCreate.as_db())
        .bind(now)
        .execute(&self.pool)
        .await;
        match res {
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "key {name} version {version}"
            ))),
            other => other.map(|_| ()).map_err(StoreError::from),
        }
    }

    async fn set_version_state(
        &self,
        name: &str,
        version: u32,
        state: VersionState,
    ) -> Result<(), StoreError> {
        let res =
            sqlx::query("UPDATE key_versions SET state = ?3 WHERE key_name = ?1 AND version = ?2")
                .bind(name)
                .bind(i64::from(version))
                .bind(state.as_db())
                .execute(&self.pool)
                .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "key {name} version {version}"
            )));
        }
        Ok(())
    }

    async fn abort_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        let res = sqlx::query(
            "DELETE FROM key_versions WHERE key_name = ?1 AND version = ?2 AND state = ?3",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(VersionState::PendingCreate.as_db())
        .execute(&self.pool)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "key {name} version {version}"
            )));
        }
        Ok(())
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
        leases::reserve_wraps(&self.pool, name, version, block).await
    }

    async fn insert_leases(&self, leases: &[(LeaseRecord, u64)]) -> Result<(), StoreError> {
        leases::insert_leases(&self.leases, leases).await
    }

    async fn active_revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError> {
        leases::active_revocations(&self.pool, now).await
    }

    async fn is_revoked(&self, who: &Who<'_>, now: i64) -> Result<bool, StoreError> {
        gate::is_revoked(&self.pool, who, now).await
    }

    async fn revoke(
        &self,
        target: &RevocationTarget,
        now: i64,
        until: i64,
    ) -> Result<u32, StoreError> {
        gate::revoke(&self.pool, target, now, until).await
    }

    async fn set_key_state(
        &self,
        name: &str,
        from: KeyState,
        to: KeyState,
        destroy_after: Option<i64>,
    ) -> Result<(), StoreError> {
        lifecycle::set_key_state(&self.pool, name, from, to, destroy_after).await
    }

    async fn swap_version_state(
        &self,
        name: &str,
        version: u32,
        from: VersionState,
        to: VersionState,
    ) -> Result<(), StoreError> {
        lifecycle::swap_version_state(&self.pool, name, version, from, to).await
    }

    async fn update_settings(&self, name: &str, update: &SettingsUpdate) -> Result<(), StoreError> {
        lifecycle::update_settings(&self.pool, name, update).await
    }

    async fn cancel_destruction(&self, name: &str, now: i64) -> Result<(), StoreError> {
        lifecycle::cancel_destruction(&self.pool, name, now).await
    }

    async fn due_destructions(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(select_keys!(
            "WHERE state = 'PENDING_DESTRUCTION' AND destroy_after <= ?1 ORDER BY name"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        self.records(&rows).await
    }

    async fn mark_destroyed(&self, name: &str) -> Result<(), StoreError> {
        lifecycle::mark_destroyed(&self.pool, name).await
    }

    async fn due_rotations(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(select_keys!(
            "WHERE state = 'ENABLED' AND next_rotation_at <= ?1 ORDER BY name"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        self.records(&rows).await
    }

    async fn claim_rotation(
        &self,
        name: &str,
        version: u32,
        due: i64,
        next: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        lifecycle::claim_rotation(&self.pool, name, version, (due, next), now).await
    }

    async fn pending_versions(&self) -> Result<Vec<(String, u32)>, StoreError> {
        lifecycle::pending_versions(&self.pool).await
    }

    async fn next_deadline(&self) -> Result<Option<i64>, StoreError> {
        lifecycle::next_deadline(&self.pool).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn gauges(&self, now: i64) -> Result<CatalogGauges, StoreError> {
        gauges::count(&self.pool, now).await
    }
}

#[cfg(test)]
mod tests;
