//! The catalog statements both backends run, each written once.
//!
//! Every statement is written in PostgreSQL's `$n` placeholder form, which the SQLite driver
//! binds the same way (sqlx reads SQLite's `$n` as parameter `n`, like `?n`), so the text is
//! the same for both and there is nothing to rewrite at run time. The statements stick to SQL
//! both databases read alike: `CAST(x AS TEXT)` rather than `x::TEXT`, an alias on every
//! subquery, `ON CONFLICT … DO NOTHING`. [`Catalog`] runs them over either pool; the schema
//! has the same columns and types in both (`TEXT`, `INTEGER`/`BIGINT` read as `i64`).
//!
//! What really differs stays with its backend, said there: the release gate (SQLite's
//! group-committed write statement, `sqlite/gate.rs`; PostgreSQL's check in the audit
//! transaction, `postgres/gate.rs`), use-count reservations (a row lock in PostgreSQL,
//! `postgres/leases.rs`), creation locks (PostgreSQL advisory locks, `postgres/creating.rs`)
//! and the one row lock in [`Dialect::LOCK_KEY`].

mod lifecycle;

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Type};

use super::rows::{
    is_unique_violation, key_from_row, select_keys, select_versions, version_from_row,
};
use super::{CatalogGauges, KeyRecord, KeyState, NewKey, StoreError, VersionRecord, VersionState};

/// What differs between the two drivers beyond the statements' text.
pub(super) trait Dialect: Database {
    /// Locks the key row (`$1`: name) for the rest of the transaction, where the database can:
    /// `abort_create` takes it so that a concurrent confirmation of version 1 waits for the
    /// decision. SQLite has no row locks and needs none: its transaction takes the database's
    /// one write lock at its first write, and fails rather than write on a stale read.
    const LOCK_KEY: Option<&'static str>;

    /// Rows a statement changed (the drivers' results share no trait for it).
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

impl Dialect for sqlx::Sqlite {
    const LOCK_KEY: Option<&'static str> = None;

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

impl Dialect for sqlx::Postgres {
    const LOCK_KEY: Option<&'static str> = Some("SELECT 1 FROM keys WHERE name = $1 FOR UPDATE");

    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
}

/// The shared statements, over one pool of either backend.
#[derive(Debug)]
pub(super) struct Catalog<DB: Database> {
    pub(super) pool: Pool<DB>,
}

impl<DB: Database> Clone for Catalog<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<DB> Catalog<DB>
where
    DB: Dialect,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'a> Option<&'a str>: Encode<'a, DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// Inserts the key and its version 1 (`PendingCreate`) in one transaction.
    pub(super) async fn insert_key(&self, key: &NewKey) -> Result<(), StoreError> {
        let labels = serde_json::to_string(&key.labels).map_err(|e| StoreError::Corrupt {
            field: "keys.labels",
            problem: e.to_string(),
        })?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO keys (name, purpose, state, labels, hsm_id, created_at, \
             min_decryption_version, rotation_period_secs, next_rotation_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8)",
        )
        .bind(key.name.as_str())
        .bind(key.purpose.as_db())
        .bind(KeyState::Enabled.as_db())
        .bind(labels.as_str())
        .bind(key.hsm_id.as_str())
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
        .bind(key.name.as_str())
        .bind(VersionState::PendingCreate.as_db())
        .bind(key.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a key whose versions are all still `PendingCreate`.
    pub(super) async fn abort_create(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(lock) = DB::LOCK_KEY {
            sqlx::query(lock).bind(name).execute(&mut *tx).await?;
        }
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
        Ok(())
    }

    pub(super) async fn get_key(&self, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query(select_keys!("WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(self.with_versions(&row).await?)),
            None => Ok(None),
        }
    }

    pub(super) async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        // Prefix match by range, not LIKE: names may contain `_`, which LIKE treats as a
        // wildcard. Both columns compare bytewise (SQLite's BINARY, PostgreSQL's "C"
        // collation), so the range is exact.
        let upper = format!("{prefix}\u{10FFFF}");
        let rows = sqlx::query(select_keys!(
            "WHERE name >= $1 AND name < $2 AND name > $3 ORDER BY name LIMIT $4"
        ))
        .bind(prefix)
        .bind(upper.as_str())
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        self.records(&rows).await
    }

    pub(super) async fn reserve_version(
        &self,
        name: &str,
        version: u32,
        now: i64,
    ) -> Result<(), StoreError> {
        let res = sqlx::query(
            "INSERT INTO key_versions (key_name, version, state, created_at) VALUES ($1, $2, $3, $4)",
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

    pub(super) async fn set_version_state(
        &self,
        name: &str,
        version: u32,
        state: VersionState,
    ) -> Result<(), StoreError> {
        let res =
            sqlx::query("UPDATE key_versions SET state = $3 WHERE key_name = $1 AND version = $2")
                .bind(name)
                .bind(i64::from(version))
                .bind(state.as_db())
                .execute(&self.pool)
                .await?;
        if DB::rows_affected(&res) == 0 {
            return Err(StoreError::NotFound(format!(
                "key {name} version {version}"
            )));
        }
        Ok(())
    }

    pub(super) async fn abort_version(&self, name: &str, version: u32) -> Result<(), StoreError> {
        let res = sqlx::query(
            "DELETE FROM key_versions WHERE key_name = $1 AND version = $2 AND state = $3",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(VersionState::PendingCreate.as_db())
        .execute(&self.pool)
        .await?;
        if DB::rows_affected(&res) == 0 {
            return Err(StoreError::Conflict(format!(
                "key {name} version {version}"
            )));
        }
        Ok(())
    }

    pub(super) async fn due_destructions(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(select_keys!(
            "WHERE state = 'PENDING_DESTRUCTION' AND destroy_after <= $1 ORDER BY name"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        self.records(&rows).await
    }

    pub(super) async fn due_rotations(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query(select_keys!(
            "WHERE state = 'ENABLED' AND next_rotation_at <= $1 ORDER BY name"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        self.records(&rows).await
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Keys by state and unexpired leases: two aggregate reads on indexed tables, run by the
    /// metrics sampler once a second at most.
    pub(super) async fn gauges(&self, now: i64) -> Result<CatalogGauges, StoreError> {
        let keys_by_state: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) AS n FROM keys GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        let leases: i64 =
            sqlx::query_scalar("SELECT COUNT(*) AS n FROM leases WHERE expires_at > $1")
                .bind(now)
                .fetch_one(&self.pool)
                .await?;
        Ok(CatalogGauges {
            keys_by_state,
            active_leases: Some(leases),
        })
    }

    async fn versions(&self, name: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let rows = sqlx::query(select_versions!("WHERE key_name = $1 ORDER BY version"))
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(version_from_row).collect()
    }

    async fn records(&self, rows: &[DB::Row]) -> Result<Vec<KeyRecord>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.with_versions(row).await?);
        }
        Ok(out)
    }

    async fn with_versions(&self, row: &DB::Row) -> Result<KeyRecord, StoreError> {
        let mut key = key_from_row(row)?;
        key.versions = self.versions(&key.name).await?;
        Ok(key)
    }
}
