//! Group commit of the release gate, for both backends. Every release must be durable before
//! its plaintext leaves, and each commit costs a WAL flush (an fsync with SQLite
//! `synchronous=FULL`, a WAL flush per COMMIT in PostgreSQL), so one transaction per release
//! capped a broker at a few hundred releases per second whatever the HSM could do. Here one
//! task takes every gate waiting when it wakes (up to [`MAX_BATCH`]) and hands them to the
//! backend's [`Batch`], which runs them in one transaction and commits once. Each caller gets
//! its answer only after that commit. Each gate statement still runs on the newest data under
//! the backend's write rules, so a `DisableKey` committed before the statement ran is always
//! seen. Any error fails the whole batch: every caller in it is refused.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{GateOutcome, LeaseRecord, ReleaseGate, StoreError, Who};

/// Most gates in one transaction.
const MAX_BATCH: usize = 256;
/// Gates waiting for the committer before callers wait for room.
const QUEUE: usize = 4096;

type Reply = oneshot::Sender<Result<GateOutcome, StoreError>>;

/// An owned copy of a [`ReleaseGate`] (the gate borrows from the request).
pub(super) struct OwnedGate {
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

    /// The gate, borrowed back.
    pub(super) fn gate(&self) -> ReleaseGate<'_> {
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

/// A backend's way to run gates.
#[async_trait]
pub(super) trait Batch: Send + Sync + 'static {
    /// Runs every gate, in order, in one transaction and commits it. The outcomes (one per
    /// gate) are returned only after the commit; any error means nothing was committed.
    ///
    /// # Errors
    /// The database's error, as text (it is given to every caller of the batch).
    async fn run(&self, gates: &[OwnedGate]) -> Result<Vec<GateOutcome>, String>;
}

/// Handle to the committer task; cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct GroupCommit {
    tx: mpsc::Sender<(OwnedGate, Reply)>,
}

impl GroupCommit {
    /// Starts the committer on `batch`.
    pub(super) fn start(batch: impl Batch) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(committer(batch, rx));
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

async fn committer(batch: impl Batch, mut rx: mpsc::Receiver<(OwnedGate, Reply)>) {
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        let (gates, replies): (Vec<OwnedGate>, Vec<Reply>) = waiting.drain(..).unzip();
        match batch.run(&gates).await {
            Ok(outcomes) if outcomes.len() == replies.len() => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _gone = reply.send(Ok(outcome));
                }
            }
            Ok(_) => refuse(replies, "gate batch answered the wrong number of gates"),
            Err(text) => refuse(replies, &text),
        }
    }
}

fn refuse(replies: Vec<Reply>, text: &str) {
    for reply in replies {
        let _gone = reply.send(Err(sqlx::Error::Protocol(text.to_owned()).into()));
    }
}
