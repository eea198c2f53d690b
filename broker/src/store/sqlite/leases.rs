//! Use-count reservations in SQLite (one write per block of wraps; DESIGN §6): read the count,
//! then raise it, in one transaction. SQLite has no row locks (`FOR UPDATE`) and its `RETURNING`
//! sees only new values, so PostgreSQL's one-statement form (`postgres/leases.rs`) cannot be
//! shared; here the transaction's write takes the database's one write lock, and a write on a
//! stale read fails instead of overlapping another reservation.

use sqlx::SqlitePool;

use crate::store::StoreError;

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
