//! Use-count reservations in PostgreSQL (DESIGN §6): counts are reserved one block per write
//! (no per-release row update, so replicas releasing under several keys take no row locks
//! against each other), in one statement whose row lock (`FOR UPDATE`) SQLite does not have
//! (`sqlite/leases.rs` has its form). Leases are inserted in the audit log's transaction (see
//! `audit::pg::writer`) with the statement both backends share.

use sqlx::PgPool;

use crate::store::catalog::Catalog;
use crate::store::{LeaseRecord, StoreError};

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

/// Inserts `leases` on `conn` (inside the audit log's transaction); existing ids are kept.
pub(crate) async fn insert_in(
    conn: &mut sqlx::PgConnection,
    leases: &[(LeaseRecord, u64)],
) -> Result<(), sqlx::Error> {
    Catalog::<sqlx::Postgres>::insert_leases_in(conn, leases).await
}
