//! The release gate and lease revocations, in PostgreSQL.
//!
//! The gate is one write statement (plus the lease insert in the same transaction). Under READ
//! COMMITTED each statement reads a snapshot taken when it starts, so a `DisableKey` committed
//! by any replica before the gate statement starts is always seen; the release is refused
//! unless the transaction commits. Nothing leaves the broker unless the gate opened.

use async_trait::async_trait;
use sqlx::PgPool;

use crate::store::group::{Batch, OwnedGate};
use crate::store::{GateOutcome, LeaseRecord, ReleaseGate, RevocationTarget, StoreError, Who};

/// Conditions shared by both gate statements. Parameters: $1 key, $3 opened version (or
/// NULL), $4 now, $5 job (or NULL), $6 subject, $7 issuer.
macro_rules! gate_conditions {
    () => {
        concat!(
            "EXISTS (SELECT 1 FROM keys WHERE name = $1 AND state = 'ENABLED') ",
            "AND ($3::BIGINT IS NULL OR EXISTS (SELECT 1 FROM key_versions ov JOIN keys ok ",
            "ON ok.name = ov.key_name WHERE ov.key_name = $1 AND ov.version = $3 ",
            "AND ov.state = 'ENABLED' AND ov.version >= ok.min_decryption_version)) ",
            "AND NOT EXISTS (SELECT 1 FROM lease_revocations r WHERE r.expires_at > $4 ",
            "AND ((r.kind = 'job' AND r.value = $5::TEXT) OR (r.kind = 'principal' ",
            "AND r.value = $6::TEXT AND (r.issuer = '' OR r.issuer = $7::TEXT))))"
        )
    };
}

/// Runs a batch of gates in one transaction on `pool` and commits once (the PostgreSQL side
/// of [`crate::store::group`]). Under READ COMMITTED each statement reads a fresh snapshot, so
/// a later gate of the batch still sees a `DisableKey` another replica committed meanwhile.
pub(super) struct PgBatch(pub(super) PgPool);

#[async_trait]
impl Batch for PgBatch {
    async fn run(&self, gates: &[OwnedGate]) -> Result<Vec<GateOutcome>, String> {
        let mut tx = self.0.begin().await.map_err(|e| e.to_string())?;
        let mut outcomes = Vec::with_capacity(gates.len());
        for gate in gates {
            // An error drops `tx`, which rolls the whole batch back.
            outcomes.push(
                release_in(&mut tx, &gate.gate())
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        // A COMMIT whose answer is lost is an error too: every caller is refused.
        tx.commit().await.map_err(|e| e.to_string())?;
        Ok(outcomes)
    }
}

/// One gate inside the batch's transaction. A closed gate has written nothing.
async fn release_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    gate: &ReleaseGate<'_>,
) -> Result<GateOutcome, StoreError> {
    let who = &gate.who;
    let count = match gate.wrap_version {
        Some(version) => {
            let count: Option<i64> = sqlx::query_scalar(concat!(
                "UPDATE key_versions SET wrap_count = wrap_count + 1 ",
                "WHERE key_name = $1 AND version = $2 AND state = 'ENABLED' AND ",
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
            .fetch_optional(&mut **tx)
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
        let inserted = insert_lease(tx, gate, lease).await?;
        if !inserted {
            if gate.wrap_version.is_some() {
                // Same conditions opened the wrap a statement ago: only a concurrent change can
                // close them now, and the count written must not stand (the batch rolls back).
                return Err(StoreError::Conflict("release gate".into()));
            }
            return Ok(GateOutcome::Closed);
        }
    }
    Ok(GateOutcome::Open(count))
}

/// Inserts the lease if the gate is open (checked in the same statement).
async fn insert_lease(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    gate: &ReleaseGate<'_>,
    lease: &LeaseRecord,
) -> Result<bool, StoreError> {
    let res = sqlx::query(concat!(
        "INSERT INTO leases (lease_id, key_name, version, op, issuer, subject, job_id, ",
        "issued_at, expires_at) SELECT $8, $1, $2, $9, $7, $6, $5, $10, $11 WHERE ",
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
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

pub(super) async fn is_revoked(pool: &PgPool, who: &Who<'_>, now: i64) -> Result<bool, StoreError> {
    let revoked: bool = sqlx::query_scalar(concat!(
        "SELECT EXISTS (SELECT 1 FROM lease_revocations r WHERE r.expires_at > $1 ",
        "AND ((r.kind = 'job' AND r.value = $2::TEXT) OR (r.kind = 'principal' ",
        "AND r.value = $3 AND (r.issuer = '' OR r.issuer = $4))))"
    ))
    .bind(now)
    .bind(who.job_id)
    .bind(who.subject)
    .bind(who.issuer)
    .fetch_one(pool)
    .await?;
    Ok(revoked)
}

pub(super) async fn revoke(
    pool: &PgPool,
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
    let mut tx = pool.begin().await?;
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
    let marked = sqlx::query(
        "UPDATE leases SET revoked_at = $1 WHERE revoked_at IS NULL AND expires_at > $1 \
         AND (($2::TEXT = 'job' AND job_id = $4::TEXT) OR ($2::TEXT = 'principal' \
         AND subject = $4::TEXT AND ($3::TEXT = '' OR issuer = $3::TEXT)))",
    )
    .bind(now)
    .bind(kind)
    .bind(issuer)
    .bind(value)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(u32::try_from(marked.rows_affected()).unwrap_or(u32::MAX))
}
