//! State transitions, settings and the scheduler's queries. Every transition is a
//! compare-and-set on the current state, so two operators (or an operator and the scheduler)
//! racing on one key cannot both win.

use sqlx::SqlitePool;

use crate::store::rows::{is_unique_violation, to_u32};
use crate::store::{KeyState, SettingsUpdate, StoreError, VersionState};

pub(super) async fn set_key_state(
    pool: &SqlitePool,
    name: &str,
    from: KeyState,
    to: KeyState,
    destroy_after: Option<i64>,
) -> Result<(), StoreError> {
    let res = sqlx::query(
        "UPDATE keys SET state = ?3, destroy_after = ?4 WHERE name = ?1 AND state = ?2",
    )
    .bind(name)
    .bind(from.as_db())
    .bind(to.as_db())
    .bind(destroy_after)
    .execute(pool)
    .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!("key {name}")));
    }
    Ok(())
}

pub(super) async fn swap_version_state(
    pool: &SqlitePool,
    name: &str,
    version: u32,
    from: VersionState,
    to: VersionState,
) -> Result<(), StoreError> {
    let res = sqlx::query(
        "UPDATE key_versions SET state = ?4 WHERE key_name = ?1 AND version = ?2 AND state = ?3 \
         AND EXISTS (SELECT 1 FROM keys WHERE name = ?1 AND state IN ('ENABLED', 'DISABLED'))",
    )
    .bind(name)
    .bind(i64::from(version))
    .bind(from.as_db())
    .bind(to.as_db())
    .execute(pool)
    .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!(
            "key {name} version {version}"
        )));
    }
    Ok(())
}

pub(super) async fn update_settings(
    pool: &SqlitePool,
    name: &str,
    update: &SettingsUpdate,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    if let Some(min) = update.min_decryption_version {
        let res = sqlx::query("UPDATE keys SET min_decryption_version = ?2 WHERE name = ?1")
            .bind(name)
            .bind(i64::from(min))
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("key {name}")));
        }
    }
    if let Some(rotation) = update.rotation {
        let (period, next) = rotation.unzip();
        let res = sqlx::query(
            "UPDATE keys SET rotation_period_secs = ?2, next_rotation_at = ?3 WHERE name = ?1",
        )
        .bind(name)
        .bind(period)
        .bind(next)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("key {name}")));
        }
    }
    tx.commit().await?;
    Ok(())
}

pub(super) async fn cancel_destruction(
    pool: &SqlitePool,
    name: &str,
    now: i64,
) -> Result<(), StoreError> {
    let res = sqlx::query(
        "UPDATE keys SET state = 'DISABLED', destroy_after = NULL \
         WHERE name = ?1 AND state = 'PENDING_DESTRUCTION' AND destroy_after > ?2",
    )
    .bind(name)
    .bind(now)
    .execute(pool)
    .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!("key {name}")));
    }
    Ok(())
}

pub(super) async fn mark_destroyed(pool: &SqlitePool, name: &str) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let res = sqlx::query(
        "UPDATE keys SET state = 'DESTROYED', destroy_after = NULL, next_rotation_at = NULL \
         WHERE name = ?1 AND state = 'PENDING_DESTRUCTION'",
    )
    .bind(name)
    .execute(&mut *tx)
    .await?;
    if res.rows_affected() == 0 {
        return Err(StoreError::Conflict(format!("key {name}")));
    }
    sqlx::query("UPDATE key_versions SET state = 'DESTROYED' WHERE key_name = ?1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn claim_rotation(
    pool: &SqlitePool,
    name: &str,
    version: u32,
    (due, next): (i64, i64),
    now: i64,
) -> Result<(), StoreError> {
    let conflict = || StoreError::Conflict(format!("key {name} version {version}"));
    let mut tx = pool.begin().await?;
    let res = sqlx::query(
        "UPDATE keys SET next_rotation_at = ?3 \
         WHERE name = ?1 AND state = 'ENABLED' AND next_rotation_at = ?2",
    )
    .bind(name)
    .bind(due)
    .bind(next)
    .execute(&mut *tx)
    .await?;
    if res.rows_affected() == 0 {
        return Err(conflict());
    }
    let inserted = sqlx::query(
        "INSERT INTO key_versions (key_name, version, state, created_at) VALUES (?1, ?2, ?3, ?4)",
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

pub(super) async fn pending_versions(pool: &SqlitePool) -> Result<Vec<(String, u32)>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT v.key_name, v.version FROM key_versions v JOIN keys k ON k.name = v.key_name \
         WHERE v.state = 'PENDING_CREATE' AND k.state IN ('ENABLED', 'DISABLED') \
         ORDER BY v.key_name, v.version",
    )
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(n, v)| Ok((n, to_u32("key_versions.version", v)?)))
        .collect()
}

pub(super) async fn next_deadline(pool: &SqlitePool) -> Result<Option<i64>, StoreError> {
    let next: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(t) FROM (\
         SELECT MIN(destroy_after) AS t FROM keys WHERE state = 'PENDING_DESTRUCTION' \
         UNION ALL SELECT MIN(next_rotation_at) FROM keys WHERE state = 'ENABLED')",
    )
    .fetch_one(pool)
    .await?;
    Ok(next)
}
