//! Group commit of the release gate. With `synchronous=FULL` every commit is an fsync of the
//! WAL (≈2–3 ms on the dev machines), and SQLite serializes writers, so one transaction per
//! release capped the broker at a few hundred releases per second whatever the HSM could do.
//! Here one task owns a connection: it takes every gate waiting when it wakes (up to
//! [`MAX_BATCH`]), runs each under its own savepoint in one `BEGIN IMMEDIATE` transaction (a
//! closed or failed gate rolls back only itself) and commits once. Each caller gets its answer
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
async fn commit(conn: &mut PoolConnection<sqlx::Sqlite>, batch: &mut Vec<(OwnedGate, Reply)>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
        let text = e.to_string();
        for (_, reply) in batch.drain(..) {
            let _gone = reply.send(Err(sqlx::Error::Protocol(text.clone()).into()));
        }
        return;
    }
    let mut opened = Vec::with_capacity(batch.len());
    for (gate, reply) in batch.drain(..) {
        let result = match exec(conn, "SAVEPOINT gate").await {
            Ok(()) => release_in(conn, &gate.gate()).await,
            Err(e) => Err(e.into()),
        };
        let end = match &result {
            Ok(GateOutcome::Open(_)) => exec(conn, "RELEASE gate").await,
            _ => match exec(conn, "ROLLBACK TO gate").await {
                Ok(()) => exec(conn, "RELEASE gate").await,
                Err(e) => Err(e),
            },
        };
        match (result, end) {
            (Ok(GateOutcome::Open(n)), Ok(())) => opened.push((n, reply)),
            (result, Ok(())) => {
                let _gone = reply.send(result);
            }
            (_, Err(e)) => {
                let _gone = reply.send(Err(e.into()));
            }
        }
    }
    match exec(conn, "COMMIT").await {
        Ok(()) => {
            for (n, reply) in opened {
                let _gone = reply.send(Ok(GateOutcome::Open(n)));
            }
        }
        Err(e) => {
            // Best effort: the connection goes back to the pool without an open transaction.
            let _ignored = exec(conn, "ROLLBACK").await;
            let text = e.to_string();
            for (_, reply) in opened {
                let _gone = reply.send(Err(sqlx::Error::Protocol(text.clone()).into()));
            }
        }
    }
}
