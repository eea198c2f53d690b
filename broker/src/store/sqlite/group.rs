//! Group commit of the release gate. With `synchronous=FULL` every commit is an fsync of the
//! WAL (≈2–3 ms on the dev machines), and SQLite serializes writers, so one transaction per
//! release capped the broker at a few hundred releases per second whatever the HSM could do.
//! Here one task owns a connection: it takes every gate waiting when it wakes (up to
//! [`MAX_BATCH`]), runs each in one `BEGIN IMMEDIATE` transaction and commits once (see
//! [`commit`] for why no gate needs a savepoint). Each caller gets its answer
//! after the commit, so a lease is still durable before the plaintext it covers leaves. Each
//! gate statement still runs under the write lock on the newest data, so a `DisableKey`
//! committed before the batch began is always seen.

use sqlx::SqlitePool;
use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot};

use super::gate::release_in;
use crate::store::{GateOutcome, LeaseRecord, ReleaseGate, StoreError, Who};

/// Most gates in one transaction.
const MAX_BATCH: usize = 256;
/// Gates waiting for the committer before callers wait for room.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<GateOutcome, StoreError>>;

/// An owned copy of a [`ReleaseGate`] (the gate borrows from the request).
struct OwnedGate {
    key: String,
    wrap_version: Option<u32>,
    open_version: Option<u32>,
    lease: Option<LeaseRecord>,
    issuer: String,
    subject: String,
    job_id: Option<String>,
    now: i64,
}

impl OwnedGate {
    fn of(g: &ReleaseGate<'_>) -> Self {
        Self {
            key: g.key.to_owned(),
            wrap_version: g.wrap_version,
            open_version: g.open_version,
            lease: g.lease.cloned(),
            issuer: g.who.issuer.to_owned(),
            subject: g.who.subject.to_owned(),
            job_id: g.who.job_id.map(str::to_owned),
            now: g.now,
        }
    }

    fn gate(&self) -> ReleaseGate<'_> {
        ReleaseGate {
            key: &self.key,
            wrap_version: self.wrap_version,
            open_version: self.open_version,
            lease: self.lease.as_ref(),
            who: Who {
                issuer: &self.issuer,
                subject: &self.subject,
                job_id: self.job_id.as_deref(),
            },
            now: self.now,
        }
    }
}

/// Handle to the committer task; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    tx: mpsc::Sender<(OwnedGate, Reply)>,
}

impl GroupCommit {
    /// Starts the committer on `pool` (it holds one connection per batch).
    pub(super) fn start(pool: SqlitePool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(committer(pool, rx));
        Self { tx }
    }

    /// Runs `gate` in the next group commit and waits for that commit.
    ///
    /// # Errors
    /// The gate's or the commit's database error; `PoolClosed` once the store is gone.
    pub(super) async fn release(&self, gate: &ReleaseGate<'_>) -> Result<GateOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((OwnedGate::of(gate), reply))
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }
}

async fn committer(pool: SqlitePool, mut rx: mpsc::Receiver<(OwnedGate, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match pool.acquire().await {
            Ok(mut conn) => commit(&mut conn, &mut batch).await,
            Err(e) => {
                let text = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _gone = reply.send(Err(sqlx::Error::Protocol(text.clone()).into()));
                }
            }
        }
    }
}

async fn exec(
    conn: &mut PoolConnection<sqlx::Sqlite>,
    sql: &'static str,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut **conn).await.map(drop)
}

/// Runs and commits one batch; every reply is sent before it returns.
///
/// No savepoint per gate: a gate that closes has written nothing (its first statement found
/// no row to change), and once a gate's first statement opened, its second one runs on the
/// same snapshot under the same conditions, so it can only fail with a database error. Any
/// such error rolls back the whole batch and every caller in it is refused: nothing is
/// released that is not durable, at the price of a rare batch-wide retry.
async fn commit(conn: &mut PoolConnection<sqlx::Sqlite>, batch: &mut Vec<(OwnedGate, Reply)>) {
    let refuse_all = |batch: &mut Vec<(OwnedGate, Reply)>, text: &str| {
        for (_, reply) in batch.drain(..) {
            let _gone = reply.send(Err(sqlx::Error::Protocol(text.to_owned()).into()));
        }
    };
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
        refuse_all(batch, &e.to_string());
        return;
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for (gate, _) in batch.iter() {
        match release_in(conn, &gate.gate()).await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => {
                // Best effort: the connection goes back to the pool without a transaction.
                let _ignored = exec(conn, "ROLLBACK").await;
                refuse_all(batch, &e.to_string());
                return;
            }
        }
    }
    if let Err(e) = exec(conn, "COMMIT").await {
        let _ignored = exec(conn, "ROLLBACK").await;
        refuse_all(batch, &e.to_string());
        return;
    }
    for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
        let _gone = reply.send(Ok(outcome));
    }
}
