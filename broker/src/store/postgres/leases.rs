//! Use-count reservations and lease rows in PostgreSQL (DESIGN §6): counts are reserved one
//! block per write (no per-release row update, so replicas releasing under several keys take
//! no row locks against each other), and leases are inserted in the audit log's transaction
//! (see `audit::pg::writer`) or, here, in a batch of their own.

use sqlx::PgPool;

use crate::store::{LeaseRecord, Revocation, StoreError};

/// The GCM random-IV limit minus one: no count goes past it.
const COUNT_LIMIT: i64 = 4_294_967_295;

pub(super) async fn reserve_wraps(
    pool: &PgPool,
    name: &str,
    version: u32,
    block: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let block = i64::try_from(block).unwrap_or(COUNT_LIMIT);
    // One statement: the row lock is held only for this update, and the old count comes from
    // the locked row, so two replicas never get overlapping ranges.
    let row: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE key_versions kv SET wrap_count = LEAST(kv.wrap_count + $3, $4) \
         FROM (SELECT key_name, version, wrap_count AS before FROM key_versions \
               WHERE key_name = $1 AND version = $2 FOR UPDATE) old \
         WHERE kv.key_name = old.key_name AND kv.version = old.version \
         AND kv.state = 'ENABLED' AND kv.wrap_count < $4 \
         RETURNING old.before, kv.wrap_count",
    )
    .bind(name)
    .bind(i64::from(version))
    .bind(block)
    .bind(COUNT_LIMIT)
    .fetch_optional(pool)
    .await?;
    let Some((before, after)) = row else {
        return Ok(None);
    };
    let count = |v: i64| {
        u64::try_from(v).map_err(|_| StoreError::Corrupt {
            field: "key_versions.wrap_count",
            problem: "negative".into(),
        })
    };
    Ok(Some((count(before)?, count(after)?)))
}

/// Inserts `leases` on `conn` (inside the caller's transaction); existing ids are kept.
pub(crate) async fn insert_in(
    conn: &mut sqlx::PgConnection,
    leases: &[(LeaseRecord, u64)],
) -> Result<(), sqlx::Error> {
    for (lease, index) in leases {
        sqlx::query(
            "INSERT INTO leases (lease_id, key_name, version, op, issuer, subject, job_id, \
             issued_at, expires_at, audit_index) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (lease_id) DO NOTHING",
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
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

pub(super) async fn insert_leases(
    pool: &PgPool,
    leases: &[(LeaseRecord, u64)],
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    insert_in(&mut tx, leases).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn active_revocations(
    pool: &PgPool,
    now: i64,
) -> Result<Vec<Revocation>, StoreError> {
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as(crate::store::rows::ACTIVE_REVOCATIONS.1)
            .bind(now)
            .fetch_all(pool)
            .await?;
    crate::store::rows::revocations_from_rows(rows)
}
