//! Counts for `/metrics`: keys by state and unexpired leases. Two aggregate reads on the
//! indexed tables, run by the metrics sampler once a second at most.

use sqlx::{Row as _, SqlitePool};

use crate::store::{CatalogGauges, StoreError};

pub(super) async fn count(pool: &SqlitePool, now: i64) -> Result<CatalogGauges, StoreError> {
    let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM keys GROUP BY state ORDER BY state")
        .fetch_all(pool)
        .await?;
    let mut keys_by_state = Vec::with_capacity(rows.len());
    for row in rows {
        keys_by_state.push((
            row.try_get::<String, _>("state")?,
            row.try_get::<i64, _>("n")?,
        ));
    }
    let leases: i64 = sqlx::query("SELECT COUNT(*) AS n FROM leases WHERE expires_at > ?1")
        .bind(now)
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    Ok(CatalogGauges {
        keys_by_state,
        active_leases: Some(leases),
    })
}
