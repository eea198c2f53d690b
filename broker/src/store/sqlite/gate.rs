//! The release gate of a bare SQLite store (the statements are SQLite's own: PostgreSQL checks
//! its gate in the audit transaction instead, `postgres/gate.rs`).
//!
//! The gate is one write statement (plus the lease insert in the same transaction): SQLite runs
//! a writing statement on the newest snapshot under the write lock, so a `DisableKey` that
//! committed before the gate runs is always seen, whatever the request did before (queued behind
//! the HSM pool, cached handles). Nothing leaves the broker unless the gate opened.

use crate::store::{GateOutcome, LeaseRecord, ReleaseGate, StoreError};

/// Every release wraps (`wrap_version`) or leases (`lease`), or both.
/// Conditions shared by both gate statements. Parameters: ?1 key, ?3 opened version (or
/// NULL), ?4 now, ?5 job (or NULL), ?6 subject, ?7 issuer.
macro_rules! gate_conditions {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM keys WHERE name = ?1 AND state = 'ENABLED') ",
            "AND (?3 IS NULL OR EXISTS (SELECT 1 FROM key_versions ov JOIN keys ok ",
            "ON ok.name = ov.key_name WHERE ov.key_name = ?1 AND ov.version = ?3 ",
            "AND ov.state = 'ENABLED' AND ov.version >= ok.min_decryption_version)) ",
            "AND NOT EXISTS (SELECT 1 FROM lease_revocations r WHERE r.expires_at > ?4 ",
            "AND ((r.kind = 'job' AND r.value = ?5) OR (r.kind = 'principal' ",
            "AND r.value = ?6 AND (r.issuer = '' OR r.issuer = ?7))))"
        )
    };
}

/// One gate on `conn`, inside a transaction the caller owns (the group commit in
/// [`super::group`] runs a batch of them in one transaction). A closed gate has written
/// nothing; an error leaves the transaction to be rolled back by the caller.
pub(super) async fn release_in(
    conn: &mut sqlx::SqliteConnection,
    gate: &ReleaseGate<'_>,
) -> Result<GateOutcome, StoreError> {
    let who = &gate.who;
    let count = match gate.wrap_version {
        Some(version) => {
            let count: Option<i64> = sqlx::query_scalar(concat!(
                "UPDATE key_versions SET wrap_count = wrap_count + 1 ",
                "WHERE key_name = ?1 AND version = ?2 AND state = 'ENABLED' AND ",
                // The GCM random-IV limit (service::GCM_RANDOM_IV_LIMIT - 1), enforced where
                // the use is counted.
                "wrap_count < 4294967295 AND ",
                gate_conditions!(),
                " RETURNING wrap_count"
            ))
            .bind(gate.key)
            .bind(i64::from(version))
            .bind(gate.open_version.map(i64::from))
            .bind(gate.now)
            .bind(who.job_id)
            .bind(who.subject)
            .bind(who.issuer)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(count) = count else {
                return Ok(GateOutcome::Closed);
            };
            u64::try_from(count).map_err(|_| StoreError::Corrupt {
                field: "key_versions.wrap_count",
                problem: "negative".into(),
            })?
        }
        None => 0,
    };
    if let Some(lease) = gate.lease {
        let inserted = insert_lease(conn, gate, lease).await?;
        if !inserted {
            if gate.wrap_version.is_some() {
                // Same conditions on the same snapshot opened the wrap: this cannot happen
                // short of a bug, and the count written must not stand (the caller rolls back).
                return Err(StoreError::Conflict("release gate".into()));
            }
            return Ok(GateOutcome::Closed);
        }
    }
    Ok(GateOutcome::Open(count))
}

/// Inserts the lease if the gate is open (checked in the same statement).
async fn insert_lease(
    conn: &mut sqlx::SqliteConnection,
    gate: &ReleaseGate<'_>,
    lease: &LeaseRecord,
) -> Result<bool, StoreError> {
    let res = sqlx::query(concat!(
        "INSERT INTO leases (lease_id, key_name, version, op, issuer, subject, job_id, ",
        "issued_at, expires_at) SELECT ?8, ?1, ?2, ?9, ?7, ?6, ?5, ?10, ?11 WHERE ",
        gate_conditions!()
    ))
    .bind(gate.key)
    .bind(i64::from(lease.version))
    .bind(gate.open_version.map(i64::from))
    .bind(gate.now)
    .bind(gate.who.job_id)
    .bind(gate.who.subject)
    .bind(gate.who.issuer)
    .bind(&lease.lease_id)
    .bind(lease.op)
    .bind(lease.issued_at)
    .bind(lease.expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(res.rows_affected() == 1)
}
