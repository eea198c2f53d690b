//! PostgreSQL backend of the catalog: one database shared by every broker replica (DESIGN §10).
//!
//! Every release runs the gate in PostgreSQL — in the audit log's transaction, which appends
//! its record and inserts its lease (DESIGN §6) — so a `DisableKey`, version disable,
//! destruction or lease revocation committed through any replica closes the gate on every
//! replica at the next request, with no cache to invalidate. A replica that cannot reach the database fails
//! the gate and releases nothing. Migrations (`migrations/postgres/`) run at connect under
//! sqlx's advisory lock, so replicas starting together apply them once.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};

mod creating;
pub(crate) mod gate;
pub(crate) mod leases;
mod lifecycle;

use creating::Creating;

use super::rows::{
    is_unique_violation, key_from_row, select_keys, select_versions, version_from_row,
};
use super::{
    CatalogGauges, GateOutcome, KeyRecord, KeyState, LeaseRecord, NewKey, ReleaseGate, Revocation,
    RevocationTarget, SettingsUpdate, Store, StoreError, VersionRecord, VersionState, Who,
};

/// How long a request waits for a database connection before it is refused: short, so a lost
/// database turns into `UNAVAILABLE` quickly instead of a queue of hung requests.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The PostgreSQL catalog.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
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
            pool,
            creating: std::sync::Arc::default(),
            wraps: std::sync::Arc::default(),
        })
    }

    /// The connection pool (the PostgreSQL audit log shares it).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let rows = sqlx::query(select_versions!("WHERE key_name = $1 ORDER BY version"))
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(version_from_row).collect()
    }

    async fn records(&self, rows: &[PgRow]) -> Result<Vec<KeyRecord>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.with_versions(row).await?);
        }
        Ok(out)
    }

    async fn with_versions(&self, row: &PgRow) -> Result<KeyRecord, StoreError> {
        let mut key = key_from_row(row)?;
        key.versions = self.versions(&key.name).await?;
        Ok(key)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_key(&self, key: &NewKey) -> Result<KeyRecord, StoreError> {
        let labels = serde_json::to_string(&key.labels).map_err(|e| StoreError::Corrupt {
            field: "keys.labels",
            problem: e.to_string(),
        })?;
        // Locked before version 1 is visible: recovery elsewhere leaves it alone.
        let lock = Creating::lock(&self.pool, &key.name, 1)
            .await?
            .ok_or_else(|| StoreError::AlreadyExists(format!("key {}", key.name)))?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO keys (name, purpose, state, labels, hsm_id, created_at, \
             min_decryption_version, rotation_period_secs, next_rotation_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8)",
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
            "INSERT INTO key_versions (key_name, version, state, created_at) VALUES ($1, 1, $2, $3)",
        )
        .bind(&key.name)
        .bind(VersionState::PendingCreate.as_db())
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.creating.keep(&key.name, 1, lock);
        self.get_key(&key.name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("key {}", key.name)))
    }

    async fn abort_create(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Lock the key row: a concurrent confirmation of version 1 waits for this decision.
        sqlx::query("SELECT 1 FROM keys WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        let others: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM key_versions WHERE key_name = $1 AND state != $2",
        )
        .bind(name)
        .bind(VersionState::PendingCreate.as_db())
        .fetch_one(&mut *tx)
        .await?;
        if others != 0 {
            return Err(StoreError::Conflict(format!("key {name}")));
        }
        sqlx::query("DELETE FROM key_versions WHERE key_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM keys WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.creating.release(name, 1).await;
        Ok(())
    }

    async fn get_key(&self, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(select_keys!("WHERE name = $1"))
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
        // Prefix match by range, not LIKE: names may contain `_`, which LIKE treats as a
        // wildcard. The column collates bytewise ("C"), so the range is exact.
        let upper = format!("{prefix}\u{10FFFF}");
        let rows = sqlx::query(select_keys!(
            "WHERE name >= $1 AND name < $2 AND name > $3 ORDER BY name LIMIT $4"
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
        let lock = Creating::lock(&self.pool, name, version)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("key {name} version {version}")))?;
        lifecycle::reserve_version(&self.pool, name, version, now).await?;
        self.creating.keep(name, version, lock);
        Ok(())
    }

    async fn set_version_state(
        &self,
        name: &str,
        version: u32,
        state: VersionState,
    ) -> Result<(), StoreError> {
        let set = lifecycle::set_version_state(&self.pool, name, version, state).await;
        // Confirmed, or failed and left for recovery: either way this replica is done with it.
        self.creating.release(name, version).await;
        set
    }

    async fn abort_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        let aborted = lifecycle::abort_version(&self.pool, name, version).await;
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
        leases::reserve_wraps(&self.pool, name, version, block).await
    }

    async fn insert_leases(&self, leases: &[(LeaseRecord, u64)]) -> Result<(), StoreError> {
        leases::insert_leases(&self.pool, leases).await
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
            "WHERE state = 'PENDING_DESTRUCTION' AND destroy_after <= $1 ORDER BY name"
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
            "WHERE state = 'ENABLED' AND next_rotation_at <= $1 ORDER BY name"
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
        let lock = Creating::lock(&self.pool, name, version)
            .await?
            .ok_or_else(|| StoreError::Conflict(format!("key {name} version {version}")))?;
        lifecycle::claim_rotation(&self.pool, name, version, (due, next), now).await?;
        self.creating.keep(name, version, lock);
        Ok(())
    }

    async fn pending_versions(&self) -> Result<Vec<(String, u32)>, StoreError> {
        // Only versions no replica is creating right now (their creation lock is free).
        let candidates = lifecycle::pending_versions(&self.pool).await?;
        self.creating.claim_pending(&self.pool, candidates).await
    }

    async fn next_deadline(&self) -> Result<Option<i64>, StoreError> {
        lifecycle::next_deadline(&self.pool).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn gauges(&self, now: i64) -> Result<CatalogGauges, StoreError> {
        // The same two aggregate reads as SQLite: keys by state, unexpired leases.
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM keys GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        let mut keys_by_state = Vec::with_capacity(rows.len());
        for row in rows {
            keys_by_state.push((
                row.try_get::<String, _>("state")?,
                row.try_get::<i64, _>("n")?,
            ));
        }
        let leases: i64 = sqlx::query("SELECT COUNT(*) AS n FROM leases WHERE expires_at > $1")
            .bind(now)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(CatalogGauges {
            keys_by_state,
            active_leases: Some(leases),
        })
    }
}
