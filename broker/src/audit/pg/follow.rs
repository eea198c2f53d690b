//! Following the PostgreSQL log: every replica mirrors committed entries into its tiles
//! directory in index order (woken by `NOTIFY keybroker_audit`, with a periodic resync since
//! notifications are lost while disconnected), and the holder of the publisher advisory lock
//! signs checkpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use super::checkpoints::Copier;
use super::{Shared, lock};
use crate::audit::checkpoint::{self, Latest, Signer, Sink};
use crate::audit::tiles::Publisher;
use crate::audit::{AuditError, AuditLog};

/// Entries read per query while catching up.
pub(super) const PAGE: i64 = 4096;
/// Resync even without a notification (notifications are lost while disconnected).
const RESYNC: Duration = Duration::from_secs(1);
/// Least time between two mirror updates: every commit of every replica notifies every
/// mirror, and writing tiles after each small commit cost a replica a quarter of its CPU in
/// file creation. Like the single node's tile writer, the mirror coalesces (checkpoints are
/// once a second anyway; durability and proofs of committed records do not wait for it).
const MIRROR_PAUSE: Duration = Duration::from_millis(200);
/// How often a replica tries to become the publisher, and the publisher checks its session.
const LEASE_CHECK: Duration = Duration::from_millis(500);
/// The advisory lock key of the checkpoint publisher ("kbaudit" in ASCII).
const PUBLISHER_LOCK: i64 = 0x006b_6261_7564_6974;

/// Entries `from..` (at most `limit`), checked to be contiguous.
pub(super) async fn read_from(
    pool: &PgPool,
    from: u64,
    limit: Option<i64>,
) -> Result<Vec<Vec<u8>>, AuditError> {
    let start = i64::try_from(from).unwrap_or(i64::MAX);
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT idx, body FROM audit_entries WHERE idx >= $1 ORDER BY idx LIMIT $2")
            .bind(start)
            .bind(limit.unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await
            .map_err(|e| AuditError::Database(e.to_string()))?;
    let mut out = Vec::with_capacity(rows.len());
    for (expect, (idx, body)) in (start..).zip(rows) {
        if idx != expect {
            return Err(AuditError::Database(format!(
                "audit_entries has a gap: index {expect} missing"
            )));
        }
        out.push(body);
    }
    Ok(out)
}

/// Mirrors new entries into `publisher`, and the newest checkpoint with them (when `copier` is
/// given), until `cancel` fires.
pub(super) async fn run(
    pool: PgPool,
    mut publisher: Publisher,
    shared: Arc<Shared>,
    mut committed: tokio::sync::watch::Receiver<u64>,
    mut copier: Option<Copier>,
    cancel: CancellationToken,
) {
    let mut listener = listen(&pool).await;
    loop {
        let mut grew = false;
        loop {
            let size = publisher.head().0;
            let page = match read_from(&pool, size, Some(PAGE)).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "audit mirror: cannot read the log");
                    break;
                }
            };
            if page.is_empty() {
                break;
            }
            let full = page.len() as i64 == PAGE;
            publisher = match tokio::task::spawn_blocking(move || {
                publisher.extend(page);
                publisher
            })
            .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "audit mirror stopped");
                    return;
                }
            };
            let head = publisher.head();
            *lock(&shared.head) = head;
            shared.size.fetch_max(head.0, Ordering::SeqCst);
            shared.published.send_replace(head.0);
            grew = true;
            if !full {
                break;
            }
        }
        if let Some(c) = copier.as_mut() {
            publisher = match c.step(&pool, publisher).await {
                Ok(p) => p,
                Err((e, Some(p))) => {
                    tracing::warn!(error = %e, "audit mirror: checkpoint not copied");
                    p
                }
                Err((e, None)) => {
                    tracing::error!(error = %e, "audit mirror stopped");
                    return;
                }
            };
        }
        if grew {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(MIRROR_PAUSE) => {}
            }
            // What was notified meanwhile is read in the next pass anyway.
            if let Some(l) = listener.as_mut() {
                while l.next_buffered().is_some() {}
            }
            continue;
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.recv().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            r = notified => {
                if r.is_err() {
                    listener = listen(&pool).await;
                }
            }
            r = committed.changed() => {
                if r.is_err() {
                    // The writer is gone: the log is closed.
                    break;
                }
            }
            () = tokio::time::sleep(RESYNC) => {
                if listener.is_none() {
                    listener = listen(&pool).await;
                }
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut l = PgListener::connect_with(pool).await.ok()?;
    l.listen("keybroker_audit").await.ok()?;
    Some(l)
}

/// Competes for the publisher lock; while holding it, signs checkpoints of `log` into the
/// database (logged with `replica_id`, so operators see which replica signs); every replica's
/// mirror copies them into its own directory. Losing the session (database restart, network)
/// stops signing until the lock is won again.
pub async fn lead(
    pool: PgPool,
    replica_id: String,
    signer: Signer,
    log: Arc<dyn AuditLog>,
    cancel: CancellationToken,
) {
    loop {
        if let Some(mut conn) = try_lock(&pool).await {
            tracing::info!(
                replica_id = replica_id.as_str(),
                "audit publisher: this replica signs checkpoints"
            );
            let signing = cancel.child_token();
            let task = tokio::spawn(checkpoint::run(
                signer.clone(),
                log.clone(),
                Sink::Database(pool.clone()),
                Latest::default(),
                signing.clone(),
            ));
            loop {
                tokio::select! {
                    () = cancel.cancelled() => {
                        signing.cancel();
                        let _ = task.await;
                        return;
                    }
                    () = tokio::time::sleep(LEASE_CHECK) => {}
                }
                if sqlx::Connection::ping(&mut conn).await.is_err() {
                    tracing::warn!(
                        replica_id = replica_id.as_str(),
                        "audit publisher: lock session lost; stopping checkpoints"
                    );
                    break;
                }
            }
            signing.cancel();
            let _ = task.await;
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(LEASE_CHECK) => {}
        }
    }
}

/// A connection (outside the pool: the lock is its session's) holding the publisher lock.
async fn try_lock(pool: &PgPool) -> Option<sqlx::PgConnection> {
    let mut conn = pool.acquire().await.ok()?.detach();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(PUBLISHER_LOCK)
        .fetch_one(&mut conn)
        .await
        .ok()?;
    got.then_some(conn)
}
