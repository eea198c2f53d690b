//! Catalog rows, decoded the same way for both backends: the SQLite and PostgreSQL schemas
//! have the same columns with the same types (`TEXT`, `BIGINT`/`INTEGER`), so one generic
//! decoder serves `SqliteRow` and `PgRow`.

use std::collections::BTreeMap;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{
    KeyRecord, KeyState, Purpose, Revocation, RevocationTarget, StoreError, VersionRecord,
    VersionState,
};

/// `SELECT … FROM keys` followed by the given SQL literal (kept literal: sqlx audits dynamic
/// SQL). The columns [`key_from_row`] reads.
macro_rules! select_keys {
    ($rest:literal) => {
        concat!(
            "SELECT name, purpose, state, labels, hsm_id, created_at, ",
            "min_decryption_version, rotation_period_secs, next_rotation_at, destroy_after ",
            "FROM keys ",
            $rest
        )
    };
}
pub(super) use select_keys;

/// The SELECT list [`version_from_row`] reads, followed by the given SQL literal.
macro_rules! select_versions {
    ($rest:literal) => {
        concat!(
            "SELECT version, state, created_at, wrap_count FROM key_versions ",
            $rest
        )
    };
}
pub(super) use select_versions;

/// A key (without its versions) from a [`select_keys!`] row.
///
/// # Errors
/// [`StoreError::Corrupt`] for a value outside its domain, or the driver's decode error.
pub(super) fn key_from_row<R>(row: &R) -> Result<KeyRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let labels: String = row.try_get("labels")?;
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&labels).map_err(|e| StoreError::Corrupt {
            field: "keys.labels",
            problem: e.to_string(),
        })?;
    let min: i64 = row.try_get("min_decryption_version")?;
    let purpose: String = row.try_get("purpose")?;
    let state: String = row.try_get("state")?;
    Ok(KeyRecord {
        name: row.try_get("name")?,
        purpose: Purpose::from_db(&purpose)?,
        state: KeyState::from_db(&state)?,
        labels,
        hsm_id: row.try_get("hsm_id")?,
        created_at: row.try_get("created_at")?,
        min_decryption_version: to_u32("keys.min_decryption_version", min)?,
        rotation_period_secs: row.try_get("rotation_period_secs")?,
        next_rotation_at: row.try_get("next_rotation_at")?,
        destroy_after: row.try_get("destroy_after")?,
        versions: Vec::new(),
    })
}

/// A version from a [`select_versions!`] row.
///
/// # Errors
/// [`StoreError::Corrupt`] for a value outside its domain, or the driver's decode error.
pub(super) fn version_from_row<R>(row: &R) -> Result<VersionRecord, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let version: i64 = row.try_get("version")?;
    let count: i64 = row.try_get("wrap_count")?;
    let state: String = row.try_get("state")?;
    Ok(VersionRecord {
        version: to_u32("key_versions.version", version)?,
        state: VersionState::from_db(&state)?,
        created_at: row.try_get("created_at")?,
        wrap_count: u64::try_from(count).map_err(|_| StoreError::Corrupt {
            field: "key_versions.wrap_count",
            problem: "negative".into(),
        })?,
    })
}

/// Revocations from `(kind, issuer, value, expires_at)` rows of `lease_revocations`.
pub(super) fn revocations_from_rows(
    rows: Vec<(String, String, String, i64)>,
) -> Result<Vec<Revocation>, StoreError> {
    rows.into_iter()
        .map(|(kind, issuer, value, expires_at)| {
            let target = match kind.as_str() {
                "job" => RevocationTarget::Job(value),
                "principal" => RevocationTarget::Principal {
                    issuer,
                    subject: value,
                },
                other => {
                    return Err(StoreError::Corrupt {
                        field: "lease_revocations.kind",
                        problem: other.to_owned(),
                    });
                }
            };
            Ok(Revocation { target, expires_at })
        })
        .collect()
}

/// `v` as a `u32`, or [`StoreError::Corrupt`] naming `field`.
///
/// # Errors
/// `v` is negative or too large.
pub(super) fn to_u32(field: &'static str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt {
        field,
        problem: format!("{v} out of range"),
    })
}

/// Whether `e` is a unique-constraint violation (both drivers report it the same way).
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
