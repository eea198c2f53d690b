//! The parts of the single-node release path that are not on its durable write: use-count
//! reservations (one write per block of wraps), lease rows written after their audit record
//! (on a connection with `synchronous=NORMAL`: the audit log is the durable record, and lost
//! rows are re-inserted from it at start), and the revocations the in-memory gate checks.

use sqlx::SqlitePool;

use crate::store::{LeaseRecord, Revocation, StoreError};

/// The GCM random-IV limit minus one (service::GCM_RANDOM_IV_LIMIT - 1): no count goes past it.
const COUNT_LIMIT: i64 = 4_294_967_295;

pub(super) async fn reserve_wraps(
    pool: &SqlitePool,
    name: &str,
    version: u32,
    block: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let block = i64::try_from(block).unwrap_or(COUNT_LIMIT);
    let mut tx = pool.begin().await?;
    let before: Option<i64> = sqlx::query_scalar(
        "SELECT wrap_count FROM key_versions WHERE key_name = ?1 AND version = ?2 \
         AND state = 'ENABLED' AND wrap_count < ?3",
    )
    .bind(name)
    .bind(i64::from(version))
    .bind(COUNT_LIMIT)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(before) = before else {
        return Ok(None);
    };
    let after = before.saturating_add(block).min(COUNT_LIMIT);
    sqlx::query("UPDATE key_versions SET wrap_count = ?3 WHERE key_name = ?1 AND version = ?2")
        .bind(name)
        .bind(i64::from(version))
        .bind(after)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let count = |v: i64| {
        u64::try_from(v).map_err(|_| StoreError::Corrupt {
            field: "key_versions.wrap_count",
            problem: "negative".into(),
        })
    };
    Ok(Some((count(before)?, count(after)?)))
}

pub(super) async fn insert_leases(
    pool: &SqlitePool,
    leases: &[(LeaseRecord, u64)],
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    for (lease, index) in leases {
        sqlx::query(
            "INSERT OR IGNORE INTO leases (lease_id, key_name, version, op, issuer, subject, \
             job_id, issued_at, expires_at, audit_index) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(&lease.lease_id)
        .bind(&lease.key_name)
        .bind(i64::from(lease.version))
        .bind(lease.op)
        .bind(&lease.issuer)
        .bind(&lease.subject)
        .bind(&lease.job_id)
        .bind(lease.issued_at)
        .bind(lease.expires_at)
        .bind(i64::try_from(*index).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn active_revocations(
    pool: &SqlitePool,
    now: i64,
) -> Result<Vec<Revocation>, StoreError> {
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as(crate::store::rows::ACTIVE_REVOCATIONS.0)
            .bind(now)
            .fetch_all(pool)
            .await?;
    crate::store::rows::revocations_from_rows(rows)
}
