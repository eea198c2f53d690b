//! [`FileAuditLog`]: the embedded audit log. One writer thread owns the tail segment and does
//! group commit: every record waiting when it wakes shares one write and one `fdatasync`, and
//! each caller awaits its own index through a oneshot. Any write or fsync error poisons the log
//! until restart (after a failed fsync the page cache may have dropped pages: the file cannot be
//! trusted again), and readiness goes false.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use super::segment::{self, Tail};
use super::tiles::{self, Publisher};
use super::{AuditError, AuditLog, AuditRecord, UnhealthyHook};
use keybroker_formats::tlog::{Hash, Tree};

/// Most records one commit takes.
const MAX_BATCH: usize = 4096;
/// Least time between two tile publications.
const PUBLISH_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);
/// Appends that may wait for the writer before callers are held back.
const QUEUE: usize = 8192;

type Reply = oneshot::Sender<Result<u64, AuditError>>;

/// Told about every durable group commit (metrics: batch size, write + fdatasync latency).
/// Called on the writer thread: it must be quick and must not block.
pub trait CommitObserver: Send + Sync + std::fmt::Debug {
    /// `records` became durable in one write + `fdatasync` that took `took`.
    fn committed(&self, records: usize, took: std::time::Duration);
}

#[derive(Debug)]
struct Shared {
    size: AtomicU64,
    commits: AtomicU64,
    /// Set first when a write fails: [`AuditLog::healthy`] is false from here on.
    failing: AtomicBool,
    /// Set after the unhealthy hook ran: appends are refused from here on.
    poisoned: AtomicBool,
    unhealthy: std::sync::OnceLock<Hook>,
    closed: AtomicBool,
    /// Size and Merkle root of the published log (what a checkpoint signs).
    head: std::sync::Mutex<(u64, Hash)>,
    /// The published size, for watchers (never waits for them).
    published: tokio::sync::watch::Sender<u64>,
    observer: std::sync::OnceLock<Arc<dyn CommitObserver>>,
}

/// The embedded audit log: segment files in `<dir>/log/`, group commit, fail closed.
#[derive(Debug, Clone)]
pub struct FileAuditLog {
    tx: mpsc::Sender<(AuditRecord, Reply)>,
    shared: Arc<Shared>,
    dir: PathBuf,
    tree: Arc<RwLock<Tree>>,
    /// Size of the checkpoint in the tiles directory (partial tiles below it may go).
    pin: Arc<AtomicU64>,
}

impl FileAuditLog {
    /// Opens (or creates) the log in `dir`, truncating a torn tail, and starts the writer
    /// thread. Blocking: call it from `spawn_blocking` or at start-up. `visit` sees every intact
    /// record, in index order (to rebuild derived state such as the Merkle tree).
    ///
    /// # Errors
    /// I/O failures, [`AuditError::Corrupt`] for damage before the tail.
    pub fn open(dir: &Path, mut visit: impl FnMut(&[u8])) -> Result<Self, AuditError> {
        let mut records = Vec::new();
        let tail = segment::open(dir, |r| {
            visit(r);
            records.push(r.to_vec());
        })?;
        let publisher = Publisher::rebuild(dir, records);
        Self::start(tail, publisher, MAX_BATCH)
    }

    fn start(tail: Tail, publisher: Publisher, max_batch: usize) -> Result<Self, AuditError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            size: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            unhealthy: std::sync::OnceLock::new(),
            closed: AtomicBool::new(false),
            head: std::sync::Mutex::new((0, Hash::default())),
            published: tokio::sync::watch::Sender::new(0),
            observer: std::sync::OnceLock::new(),
        });
        shared.size.store(tail.next_index, Ordering::SeqCst);
        *lock(&shared.head) = publisher.head();
        shared.published.send_replace(publisher.head().0);
        let tree = publisher.tree();
        let pin = publisher.pin();
        let tiles_dir = publisher.dir().to_path_buf();
        let (published, durable) = std::sync::mpsc::channel();
        let tiles_shared = shared.clone();
        let writer = Writer {
            tail,
            published,
            rx,
            shared: shared.clone(),
            max_batch,
        };
        let dir = writer.tail.dir.clone();
        std::thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|source| AuditError::Io {
                what: "start the writer for",
                path: dir.clone(),
                source,
            })?;
        std::thread::Builder::new()
            .name("audit-tiles".to_owned())
            .spawn(move || publish(publisher, &durable, &tiles_shared))
            .map_err(|source| AuditError::Io {
                what: "start the tile writer for",
                path: dir,
                source,
            })?;
        Ok(Self {
            tx,
            shared,
            dir: tiles_dir,
            tree,
            pin,
        })
    }

    /// Reports every later commit to `observer` (set once; a second call is ignored).
    pub fn observe_commits(&self, observer: Arc<dyn CommitObserver>) {
        let _ = self.shared.observer.set(observer);
    }

    /// How many commits (write + fdatasync) the writer has made.
    #[must_use]
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl AuditLog for FileAuditLog {
    async fn append(&self, record: AuditRecord) -> Result<u64, AuditError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(AuditError::Poisoned);
        }
        let (reply, done) = oneshot::channel();
        self.tx
            .send((record, reply))
            .await
            .map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    fn size(&self) -> u64 {
        self.shared.size.load(Ordering::SeqCst)
    }

    fn head(&self) -> (u64, Hash) {
        *lock(&self.shared.head)
    }

    fn healthy(&self) -> bool {
        !self.shared.failing.load(Ordering::SeqCst) && !self.shared.closed.load(Ordering::SeqCst)
    }

    fn on_unhealthy(&self, hook: UnhealthyHook) {
        let _ = self.shared.unhealthy.set(Hook(hook));
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

    fn checkpoint_written(&self, size: u64) {
        self.pin.fetch_max(size, Ordering::SeqCst);
    }
}

/// The unhealthy hook (a closure has no `Debug`).
struct Hook(UnhealthyHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tiles and the head follow the durable records on their own thread, coalescing whatever
/// arrived meanwhile: tile files (renames) stay off the commit path.
fn publish(
    mut publisher: Publisher,
    durable: &std::sync::mpsc::Receiver<Vec<Vec<u8>>>,
    shared: &Shared,
) {
    while let Ok(mut records) = durable.recv() {
        while let Ok(more) = durable.try_recv() {
            records.extend(more);
        }
        publisher.extend(records);
        let head = publisher.head();
        *lock(&shared.head) = head;
        shared.published.send_replace(head.0);
        // Rewriting partial tiles on every commit competes with fdatasync for the journal;
        // a pause batches them (checkpoints are once a second anyway).
        std::thread::sleep(PUBLISH_PAUSE);
    }
}

struct Writer {
    tail: Tail,
    published: std::sync::mpsc::Sender<Vec<Vec<u8>>>,
    rx: mpsc::Receiver<(AuditRecord, Reply)>,
    shared: Arc<Shared>,
    max_batch: usize,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::new();
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
        self.shared.closed.store(true, Ordering::SeqCst);
    }

    fn commit(&mut self, batch: &mut Vec<(AuditRecord, Reply)>) {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(AuditError::Poisoned));
            }
            return;
        }
        let mut frames = Vec::new();
        let mut bodies = Vec::with_capacity(batch.len());
        let mut accepted = Vec::with_capacity(batch.len());
        let mut index = self.tail.next_index;
        for (mut record, reply) in batch.drain(..) {
            record.index = index;
            match record.to_canonical_json() {
                Ok(bytes) => {
                    segment::encode_frame(&bytes, &mut frames);
                    bodies.push(bytes);
                    accepted.push((index, reply));
                    index += 1;
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if accepted.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        match self.tail.write_durable(&frames, accepted.len() as u64) {
            Ok(()) => {
                if let Some(observer) = self.shared.observer.get() {
                    observer.committed(accepted.len(), started.elapsed());
                }
                self.shared
                    .size
                    .store(self.tail.next_index, Ordering::SeqCst);
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                for (index, reply) in accepted {
                    let _ = reply.send(Ok(index));
                }
                // Tiles are derived data: published after the replies, by their own thread.
                let _ = self.published.send(bodies);
            }
            Err(e) => {
                tracing::error!(error = %e, lost = accepted.len(),
                    "audit log poisoned: refusing every record until restart");
                // Unhealthy, then told, then refusing: no caller is refused while health
                // still says SERVING.
                self.shared.failing.store(true, Ordering::SeqCst);
                if let Some(Hook(hook)) = self.shared.unhealthy.get() {
                    hook();
                }
                self.shared.poisoned.store(true, Ordering::SeqCst);
                for (_, reply) in accepted {
                    let _ = reply.send(Err(AuditError::Poisoned));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;
    use crate::audit::Op;

    fn record(n: usize) -> AuditRecord {
        AuditRecord::new(Op::GenerateDataKey, format!("req-{n}"), "test".into())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_get_distinct_gapless_indices_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileAuditLog::open(dir.path(), |_| {}).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..500 {
            let log = log.clone();
            tasks.spawn(async move { (n, log.append(record(n)).await.unwrap()) });
        }
        let mut by_index = std::collections::BTreeMap::new();
        while let Some(r) = tasks.join_next().await {
            let (n, index) = r.unwrap();
            assert!(by_index.insert(index, n).is_none());
        }
        assert_eq!(
            by_index.keys().copied().collect::<Vec<_>>(),
            (0..500).collect::<Vec<u64>>()
        );
        assert_eq!(log.size(), 500);
        assert!(
            log.commits() < 500,
            "group commit shares fsyncs: {} commits",
            log.commits()
        );
        drop(log);
        // Each record sits at the position its index names, carrying the caller's request id.
        let mut seen = Vec::new();
        let reopened = FileAuditLog::open(dir.path(), |b| {
            seen.push(serde_json::from_slice::<serde_json::Value>(b).unwrap());
        })
        .unwrap();
        for (pos, v) in seen.iter().enumerate() {
            assert_eq!(v["index"], pos as u64);
            let n = by_index[&(pos as u64)];
            assert_eq!(v["request_id"], format!("req-{n}"));
        }
        assert_eq!(reopened.append(record(9999)).await.unwrap(), 500);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn durable_records_are_published_as_tiles_and_repaired_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileAuditLog::open(dir.path(), |_| {}).unwrap();
        for n in 0..300 {
            log.append(record(n)).await.unwrap();
        }
        // The head moves just after the replies (tiles stay off the callers' latency).
        let mut head = log.head();
        for _ in 0..200 {
            if head.0 == 300 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            head = log.head();
        }
        let (size, root) = head;
        assert_eq!(size, 300);
        drop(log);
        let mut tree = keybroker_formats::tlog::Tree::default();
        let full = dir.path().join("tile/0/000");
        assert!(full.exists());
        assert!(dir.path().join("tile/entries/001.p/44").exists());
        std::fs::remove_file(&full).unwrap();
        let reopened = FileAuditLog::open(dir.path(), |r| tree.push_record(r)).unwrap();
        assert_eq!(
            tree.root(),
            root,
            "head is the RFC 6962 root of the records on disk"
        );
        assert_eq!(reopened.head(), (300, root));
        assert_eq!(std::fs::read(&full).unwrap(), tree.level(0)[..256].concat());
    }

    #[tokio::test]
    async fn a_write_error_poisons_the_log_until_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut tail = segment::open(dir.path(), |_| {}).unwrap();
        // /dev/full fails every write with ENOSPC, like a full disk.
        tail.file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let publisher = Publisher::rebuild(dir.path(), Vec::new());
        let log = FileAuditLog::start(tail, publisher, MAX_BATCH).unwrap();
        assert!(log.healthy());
        // The hook runs before the refusal is answered, and sees the log unhealthy.
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (seen_by_hook, probe) = (seen.clone(), log.shared.clone());
        log.on_unhealthy(Arc::new(move || {
            lock(&seen_by_hook).push(probe.failing.load(Ordering::SeqCst));
        }));
        assert!(matches!(
            log.append(record(0)).await,
            Err(AuditError::Poisoned)
        ));
        assert!(!log.healthy());
        assert_eq!(*lock(&seen), vec![true], "called once, before the refusal");
        assert!(matches!(
            log.append(record(1)).await,
            Err(AuditError::Poisoned)
        ));
        assert_eq!(log.size(), 0);
    }

    #[tokio::test]
    async fn an_oversized_record_is_refused_without_taking_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileAuditLog::open(dir.path(), |_| {}).unwrap();
        let mut big = record(0);
        big.reasons = vec!["x".repeat(20_000)];
        assert!(matches!(
            log.append(big).await,
            Err(AuditError::RecordTooLarge { .. })
        ));
        assert!(log.healthy());
        assert_eq!(log.append(record(1)).await.unwrap(), 0);
    }
}

#[cfg(test)]
#[path = "log_bench.rs"]
mod bench;
