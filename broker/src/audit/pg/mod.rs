//! [`PgAuditLog`]: one audit log for every replica, sequenced in PostgreSQL (DESIGN §6, §10).
//!
//! Appends: a writer task group-commits whatever is waiting in one transaction that locks the
//! `audit_head` row, gives the batch the next indices, inserts the entries, advances the Merkle
//! frontier and root, and commits; callers are answered only after COMMIT. Any error — an
//! ambiguous COMMIT on a lost connection included — refuses the whole batch (the records may or
//! may not be in the log; the operations were not done, which the log can say but never hide).
//!
//! Every replica mirrors the committed entries, in index order, into its own tiles directory
//! (`audit.dir`; tiles are deterministic, so every mirror is identical) and keeps the tree for
//! proofs. One replica at a time — the holder of a PostgreSQL advisory lock — signs checkpoints;
//! when it dies its session ends, the lock is free, and another replica continues the same log.

mod checkpoints;
mod follow;
mod frontier;
mod resume;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use follow::lead;

use super::checkpoint::{self, Latest, Signer};
use super::tiles;
use super::{AuditError, AuditLog, AuditRecord, CommitObserver};
use crate::keys::leases::ReleaseTicket;
use keybroker_formats::tlog::{Hash, Tree};

/// Appends that may wait for the writer before callers are held back.
const QUEUE: usize = 8192;

type Reply = oneshot::Sender<Result<u64, AuditError>>;
/// A record, the ticket of the release it records (if any), and where its answer goes.
type Item = (AuditRecord, Option<ReleaseTicket>, Reply);

#[derive(Debug)]
struct Shared {
    /// Records known durable (committed by anyone, as far as this replica has seen).
    size: AtomicU64,
    /// False while the database refuses commits.
    healthy: AtomicBool,
    closed: AtomicBool,
    head: std::sync::Mutex<(u64, Hash)>,
    published: tokio::sync::watch::Sender<u64>,
    /// Told about every committed batch (the same metrics as the file log's group commits).
    observer: std::sync::OnceLock<Arc<dyn CommitObserver>>,
}

/// The PostgreSQL-sequenced audit log of a replica.
#[derive(Debug, Clone)]
pub struct PgAuditLog {
    tx: mpsc::Sender<Item>,
    shared: Arc<Shared>,
    dir: PathBuf,
    tree: Arc<RwLock<Tree>>,
}

impl PgAuditLog {
    /// Mirrors the log into the tiles directory `dir` and starts the writer and the follower
    /// on `tasks`; both stop when `cancel` fires. The mirror resumes from the whole bundles
    /// already in `dir`: only later entries are read from the database. With `checkpoints`
    /// (the log's signer and where this replica serves checkpoints from), the newest stored
    /// checkpoint is copied into `dir` and served as the mirror reaches it.
    ///
    /// # Errors
    /// The database cannot be read or holds a damaged log; `dir` mirrors another log.
    pub async fn open(
        pool: PgPool,
        dir: &Path,
        checkpoints: Option<(Signer, Latest)>,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(|source| AuditError::Io {
            what: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let publisher = resume::mirror(&pool, dir).await?;
        let copier = checkpoints.map(|(signer, latest)| {
            checkpoint::write_vkey(dir, &signer);
            checkpoints::Copier {
                signer,
                latest,
                copied: None,
            }
        });
        let head = publisher.head();
        let size = head.0;
        let shared = Arc::new(Shared {
            size: AtomicU64::new(size),
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            head: std::sync::Mutex::new(head),
            published: tokio::sync::watch::Sender::new(head.0),
            observer: std::sync::OnceLock::new(),
        });
        let tree = publisher.tree();
        let (tx, rx) = mpsc::channel(QUEUE);
        let (committed_tx, committed_rx) = tokio::sync::watch::channel(size);
        tasks.spawn(writer::run(
            pool.clone(),
            rx,
            shared.clone(),
            committed_tx,
            cancel.clone(),
        ));
        tasks.spawn(follow::run(
            pool,
            publisher,
            shared.clone(),
            committed_rx,
            copier,
            cancel.clone(),
        ));
        Ok(Self {
            tx,
            shared,
            dir: dir.to_path_buf(),
            tree,
        })
    }
}

impl PgAuditLog {
    /// Reports every later committed batch to `observer` (set once; a second call is ignored):
    /// its records and the time of its transaction, under the same metric names as the file
    /// log, so one dashboard serves both.
    pub fn observe_commits(&self, observer: Arc<dyn CommitObserver>) {
        let _ = self.shared.observer.set(observer);
    }
}

#[async_trait::async_trait]
impl AuditLog for PgAuditLog {
    async fn append(&self, record: AuditRecord) -> Result<u64, AuditError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((record, None, reply))
            .await
            .map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    async fn append_release(
        &self,
        record: AuditRecord,
        ticket: ReleaseTicket,
    ) -> Result<(u64, Option<crate::store::LeaseRecord>), AuditError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((record, Some(ticket), reply))
            .await
            .map_err(|_| AuditError::Closed)?;
        // The lease went in with the record.
        done.await
            .map_err(|_| AuditError::Closed)?
            .map(|i| (i, None))
    }

    fn size(&self) -> u64 {
        self.shared.size.load(Ordering::SeqCst)
    }

    fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::SeqCst) && !self.shared.closed.load(Ordering::SeqCst)
    }

    fn head(&self) -> (u64, Hash) {
        *lock(&self.shared.head)
    }

    fn read_published(&self, from: u64, max: usize) -> Result<Vec<Vec<u8>>, AuditError> {
        tiles::read_entries(&self.dir, self.head().0, from, max)
    }

    fn published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.published.subscribe()
    }

    fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        tiles::read(&self.tree).inclusion_proof(index, size)
    }

    fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        tiles::read(&self.tree).consistency_proof(old, new)
    }
}

/// The checkpoint origin of the log in this database (made once, at migration).
///
/// # Errors
/// The database cannot be read.
pub async fn origin(pool: &PgPool) -> Result<String, AuditError> {
    sqlx::query_scalar("SELECT origin FROM audit_head WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(|e| AuditError::Database(e.to_string()))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
