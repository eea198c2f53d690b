//! State transitions, settings, the scheduler's queries, revocations and lease rows, for both
//! backends. Every transition is a compare-and-set on the current state, so two operators (or
//! replicas, or an operator and a scheduler) racing on one key cannot both win.

use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};

use super::{Catalog, Dialect};
use crate::store::rows::{is_unique_violation, revocations_from_rows, to_u32};
use crate::store::{
    KeyState, LeaseRecord, Revocation, RevocationTarget, SettingsUpdate, StoreError, VersionState,
    Who,
};

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
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    pub(in crate::store) async fn set_key_state(
        &self,
        name: &str,
        from: KeyState,
        to: KeyState,
        destroy_after: Option<i64>,
    ) -> Result<(), StoreError> {
        let res = sqlx::query(
            "UPDATE keys SET state = $3, destroy_after = $4 WHERE name = $1 AND state = $2",
        )
        .bind(name)
        .bind(from.as_db())
        .bind(to.as_db())
        .bind(destroy_after)
        .execute(&self.pool)
        .await?;
        if DB::rows_affected(&res) == 0 {
            return Err(StoreError::Conflict(format!("key {name}")));
        }
        Ok(())
    }

    pub(in crate::store) async fn swap_version_state(
        &self,
        name: &str,
        version: u32,
        from: VersionState,
        to: VersionState,
    ) -> Result<(), StoreError> {
        let res = sqlx::query(
            "UPDATE key_versions SET state = $4 WHERE key_name = $1 AND version = $2 AND state = $3 \
             AND EXISTS (SELECT 1 FROM keys WHERE name = $1 AND state IN ('ENABLED', 'DISABLED'))",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(from.as_db())
        .bind(to.as_db())
        .execute(&self.pool)
        .await?;
        if DB::rows_affected(&res) == 0 {
            return Err(StoreError::Conflict(format!(
                "key {name} version {version}"
            )));
        }
        Ok(())
    }

    pub(in crate::store) async fn update_settings(
        &self,
        name: &str,
        update: &SettingsUpdate,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(min) = update.min_decryption_version {
            let res = sqlx::query("UPDATE keys SET min_decryption_version = $2 WHERE name = $1")
                .bind(name)
                .bind(i64::from(min))
                .execute(&mut *tx)
                .await?;
            if DB::rows_affected(&res) == 0 {
                return Err(StoreError::NotFound(format!("key {name}")));
            }
        }
        if let Some(rotation) = update.rotation {
            let (period, next) = rotation.unzip();
            let res = sqlx::query(
                "UPDATE keys SET rotation_period_secs = $2, next_rotation_at = $3 WHERE name = $1",
            )
            .bind(name)
            .bind(period)
            .bind(next)
            .execute(&mut *tx)
            .await?;
            if DB::rows_affected(&res) == 0 {
                return Err(StoreError::NotFound(format!("key {name}")));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub(in crate::store) async fn cancel_destruction(
        &self,
        name: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let res = sqlx::query(
            "UPDATE keys SET state = 'DISABLED', destroy_after = NULL \
             WHERE name = $1 AND state = 'PENDING_DESTRUCTION' AND destroy_after > $2",
        )
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if DB::rows_affected(&res) == 0 {
            return Err(StoreError::Conflict(format!("key {name}")));
        }
        Ok(())
    }

    pub(in crate::store) async fn mark_destroyed(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "UPDATE keys SET state = 'DESTROYED', destroy_after = NULL, next_rotation_at = NULL \
             WHERE name = $1 AND state = 'PENDING_DESTRUCTION'",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&res) == 0 {
            return Err(StoreError::Conflict(format!("key {name}")));
        }
        sqlx::query("UPDATE key_versions SET state = 'DESTROYED' WHERE key_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves `next_rotation_at` from `due` to `next` and reserves `version`, in one
    /// transaction.
    pub(in crate::store) async fn claim_rotation(
        &self,
        name: &str,
        version: u32,
        (due, next): (i64, i64),
        now: i64,
    ) -> Result<(), StoreError> {
        let conflict = || StoreError::Conflict(format!("key {name} version {version}"));
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "UPDATE keys SET next_rotation_at = $3 \
             WHERE name = $1 AND state = 'ENABLED' AND next_rotation_at = $2",
        )
        .bind(name)
        .bind(due)
        .bind(next)
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&res) == 0 {
            return Err(conflict());
        }
        let inserted = sqlx::query(
            "INSERT INTO key_versions (key_name, version, state, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(i64::from(version))
        .bind(VersionState::PendingCreate.as_db())
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => return Err(conflict()),
            other => other?,
        };
        tx.commit().await?;
        Ok(())
    }

    /// Versions still `PendingCreate` of keys that may yet be used.
    pub(in crate::store) async fn pending_versions(
        &self,
    ) -> Result<Vec<(String, u32)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT v.key_name, v.version FROM key_versions v JOIN keys k ON k.name = v.key_name \
             WHERE v.state = 'PENDING_CREATE' AND k.state IN ('ENABLED', 'DISABLED') \
             ORDER BY v.key_name, v.version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(n, v)| Ok((n, to_u32("key_versions.version", v)?)))
            .collect()
    }

    pub(in crate::store) async fn next_deadline(&self) -> Result<Option<i64>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(t) FROM (\
             SELECT MIN(destroy_after) AS t FROM keys WHERE state = 'PENDING_DESTRUCTION' \
             UNION ALL SELECT MIN(next_rotation_at) FROM keys WHERE state = 'ENABLED') AS d",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next)
    }

    /// Revocations in force at `now` (for the in-memory gate).
    pub(in crate::store) async fn active_revocations(
        &self,
        now: i64,
    ) -> Result<Vec<Revocation>, StoreError> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT kind, issuer, value, expires_at FROM lease_revocations WHERE expires_at > $1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        revocations_from_rows(rows)
    }

    pub(in crate::store) async fn is_revoked(
        &self,
        who: &Who<'_>,
        now: i64,
    ) -> Result<bool, StoreError> {
        // The job id may be NULL: the CAST gives PostgreSQL its type.
        let revoked: bool = sqlx::query_scalar(concat!(
            "SELECT EXISTS (SELECT 1 FROM lease_revocations r WHERE r.expires_at > $1 ",
            "AND ((r.kind = 'job' AND r.value = CAST($2 AS TEXT)) OR (r.kind = 'principal' ",
            "AND r.value = $3 AND (r.issuer = '' OR r.issuer = $4))))"
        ))
        .bind(now)
        .bind(who.job_id)
        .bind(who.subject)
        .bind(who.issuer)
        .fetch_one(&self.pool)
        .await?;
        Ok(revoked)
    }

    /// Records the revocation and marks the unexpired leases it covers, in one transaction.
    pub(in crate::store) async fn revoke(
        &self,
        target: &RevocationTarget,
        now: i64,
        until: i64,
    ) -> Result<u32, StoreError> {
        let (kind, issuer, value) = match target {
            RevocationTarget::Job(job) => ("job", "", job.as_str()),
            RevocationTarget::Principal { issuer, subject } => {
                ("principal", issuer.as_str(), subject.as_str())
            }
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO lease_revocations (kind, issuer, value, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(kind)
        .bind(issuer)
        .bind(value)
        .bind(now)
        .bind(until)
        .execute(&mut *tx)
        .await?;
        // Each parameter is compared with more than one thing: the CASTs give PostgreSQL one
        // type for each.
        let marked = sqlx::query(
            "UPDATE leases SET revoked_at = $1 WHERE revoked_at IS NULL AND expires_at > $1 \
             AND ((CAST($2 AS TEXT) = 'job' AND job_id = CAST($4 AS TEXT)) \
             OR (CAST($2 AS TEXT) = 'principal' AND subject = CAST($4 AS TEXT) \
             AND (CAST($3 AS TEXT) = '' OR issuer = CAST($3 AS TEXT))))",
        )
        .bind(now)
        .bind(kind)
        .bind(issuer)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(u32::try_from(DB::rows_affected(&marked)).unwrap_or(u32::MAX))
    }

    /// Records leases whose releases are in the audit log, in one transaction.
    pub(in crate::store) async fn insert_leases(
        &self,
        leases: &[(LeaseRecord, u64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Self::insert_leases_in(&mut tx, leases).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts `leases` on `conn` (inside the caller's transaction); a lease id already
    /// recorded is left as it is (the id is the table's only key, so `ON CONFLICT (lease_id)`
    /// is what SQLite's `INSERT OR IGNORE` did).
    pub(in crate::store) async fn insert_leases_in(
        conn: &mut DB::Connection,
        leases: &[(LeaseRecord, u64)],
    ) -> Result<(), sqlx::Error> {
        for (lease, index) in leases {
            sqlx::query(
                "INSERT INTO leases (lease_id, key_name, version, op, issuer, subject, job_id, \
                 issued_at, expires_at, audit_index) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (lease_id) DO NOTHING",
            )
            .bind(lease.lease_id.as_str())
            .bind(lease.key_name.as_str())
            .bind(i64::from(lease.version))
            .bind(lease.op)
            .bind(lease.issuer.as_str())
            .bind(lease.subject.as_str())
            .bind(lease.job_id.as_deref())
            .bind(lease.issued_at)
            .bind(lease.expires_at)
            .bind(i64::try_from(*index).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
