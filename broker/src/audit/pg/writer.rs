//! Group commit into PostgreSQL: one transaction per batch, under the `audit_head` row lock.
//! The transaction is also the release gate of the replicas (DESIGN §6): for every release in
//! the batch it checks key, versions and revocations on the newest committed data (one
//! statement for the whole batch), turns the record of a release no longer allowed into a
//! refusal, and inserts the leases of the allowed ones — so a release's one durable write is
//! this commit, and it takes no row lock but the head's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frontier::Frontier;
use super::{Item, Shared};
use crate::audit::{AuditError, AuditRecord, Decision, GATE_CLOSED_REASON};
use crate::keys::leases::ReleaseTicket;
use crate::store::LeaseRecord;
use crate::store::postgres::gate::{Verdict, check_in};
use keybroker_formats::tlog::leaf_hash;

/// Most records one transaction takes.
const MAX_BATCH: usize = 2048;
/// While unhealthy, how often an idle writer checks whether the database is back.
const RECHECK: Duration = Duration::from_secs(1);

pub(super) async fn run(
    pool: PgPool,
    mut rx: mpsc::Receiver<Item>,
    shared: Arc<Shared>,
    committed: tokio::sync::watch::Sender<u64>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            // Shutdown: keep committing what is queued, then stop.
            () = cancel.cancelled(), if rx.is_empty() => break,
            first = rx.recv() => first,
            () = tokio::time::sleep(RECHECK), if !shared.healthy.load(Ordering::SeqCst) => {
                if sqlx::query("SELECT 1").execute(&pool).await.is_ok() {
                    shared.healthy.store(true, Ordering::SeqCst);
                }
                continue;
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        commit_batch(&pool, &mut batch, &shared, &committed).await;
    }
    shared.closed.store(true, Ordering::SeqCst);
}

async fn commit_batch(
    pool: &PgPool,
    batch: &mut Vec<Item>,
    shared: &Shared,
    committed: &tokio::sync::watch::Sender<u64>,
) {
    let mut records = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for (record, ticket, reply) in batch.drain(..) {
        records.push((record, ticket));
        replies.push(reply);
    }
    let started = Instant::now();
    match append(pool, &mut records).await {
        Ok((first, accepted)) => {
            shared.healthy.store(true, Ordering::SeqCst);
            let taken = accepted.iter().filter(|a| a.is_ok()).count();
            if taken > 0
                && let Some(observer) = shared.observer.get()
            {
                observer.committed(taken, started.elapsed());
            }
            let mut index = first;
            let mut end = first;
            for (reply, ok) in replies.into_iter().zip(accepted) {
                match ok {
                    Ok(()) => {
                        let _ = reply.send(Ok(index));
                        index += 1;
                        end = index;
                    }
                    // Logged as a refusal: it took an index.
                    Err(e @ AuditError::GateClosed { .. }) => {
                        let _ = reply.send(Err(e));
                        index += 1;
                        end = index;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            shared.size.fetch_max(end, Ordering::SeqCst);
            committed.send_if_modified(|v| {
                let grew = end > *v;
                *v = (*v).max(end);
                grew
            });
        }
        Err(e) => {
            // Possibly committed (a lost connection during COMMIT), possibly not: refuse every
            // caller either way. Readiness goes false until the database answers again.
            tracing::error!(error = %e, lost = replies.len(),
                "audit commit to PostgreSQL failed: refusing the batch");
            shared.healthy.store(false, Ordering::SeqCst);
            for reply in replies {
                let _ = reply.send(Err(AuditError::Database(e.to_string())));
            }
        }
    }
}

/// Turns the record of a release its gate refused into the refusal the caller gets.
fn refuse(record: &mut AuditRecord, verdict: Verdict) {
    let (code, reason) = match verdict {
        Verdict::Revoked => (
            "permission_denied",
            crate::keys::KeyError::Revoked.to_string(),
        ),
        _ => ("failed_precondition", GATE_CLOSED_REASON.to_owned()),
    };
    record.decision = Decision::Deny;
    code.clone_into(&mut record.outcome.code);
    record.reasons = vec![reason];
    record.lease_id = None;
    record.lease_expires_at = None;
}

/// Appends the encodable records of `records` in one transaction, after checking the gates of
/// the releases among them. Returns the first index and, per record, whether it was taken as
/// asked (`Ok`), taken as a refusal (`GateClosed`), or not taken (a record that does not
/// encode takes no index).
async fn append(
    pool: &PgPool,
    records: &mut [(AuditRecord, Option<ReleaseTicket>)],
) -> Result<(u64, Vec<Result<(), AuditError>>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let (size, frontier): (i64, Vec<u8>) =
        sqlx::query_as("SELECT size, frontier FROM audit_head WHERE id = 1 FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
    let size = u64::try_from(size).map_err(|_| corrupt("audit_head.size is negative"))?;
    let mut frontier = Frontier::decode(size, &frontier)
        .ok_or_else(|| corrupt("audit_head.frontier does not fit audit_head.size"))?;
    // The gates, checked after the head lock (a batch's checks and its records are one step
    // of the log's order) and on the newest committed catalog data.
    let checks: Vec<_> = records
        .iter()
        .filter_map(|(_, t)| t.as_ref().map(|t| &t.check))
        .collect();
    let mut verdicts = check_in(&mut tx, &checks).await?.into_iter();
    let mut indices = Vec::with_capacity(records.len());
    let mut bodies = Vec::with_capacity(records.len());
    let mut accepted = Vec::with_capacity(records.len());
    let mut leases: Vec<(LeaseRecord, u64)> = Vec::new();
    for (record, ticket) in records.iter_mut() {
        let verdict = match ticket {
            Some(_) => verdicts
                .next()
                .ok_or_else(|| corrupt("gate verdict missing"))?,
            None => Verdict::Open,
        };
        if verdict != Verdict::Open {
            refuse(record, verdict);
        }
        record.index = frontier.size();
        match record.to_canonical_json() {
            Ok(bytes) => {
                frontier.push(leaf_hash(&bytes));
                indices.push(i64::try_from(record.index).map_err(|_| corrupt("index overflow"))?);
                bodies.push(bytes);
                if verdict == Verdict::Open {
                    if let Some(lease) = ticket.as_mut().and_then(|t| t.lease.take()) {
                        leases.push((lease, record.index));
                    }
                    accepted.push(Ok(()));
                } else {
                    accepted.push(Err(AuditError::GateClosed {
                        revoked: verdict == Verdict::Revoked,
                    }));
                }
            }
            Err(e) => accepted.push(Err(e)),
        }
    }
    if !leases.is_empty() {
        crate::store::postgres::leases::insert_in(&mut tx, &leases).await?;
    }
    if !bodies.is_empty() {
        sqlx::query(
            "INSERT INTO audit_entries (idx, body) SELECT * FROM UNNEST($1::BIGINT[], $2::BYTEA[])",
        )
        .bind(&indices)
        .bind(&bodies)
        .execute(&mut *tx)
        .await?;
        let new_size = i64::try_from(frontier.size()).map_err(|_| corrupt("size overflow"))?;
        sqlx::query("UPDATE audit_head SET size = $1, root = $2, frontier = $3 WHERE id = 1")
            .bind(new_size)
            .bind(frontier.root().as_slice())
            .bind(frontier.encode())
            .execute(&mut *tx)
            .await?;
        // Delivered at COMMIT to every replica's follower.
        sqlx::query("SELECT pg_notify('keybroker_audit', $1::TEXT)")
            .bind(new_size.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok((size, accepted))
}

fn corrupt(problem: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("audit log in PostgreSQL is damaged: {problem}"))
}
