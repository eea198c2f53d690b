//! The PostgreSQL-sequenced audit log ([`PgAuditLog`]) against a real throwaway PostgreSQL:
//! its group commits reach the same metrics as the file log's, and a replica restarting on an
//! existing log resumes its mirror from its tiles directory instead of reading the whole log.
//! Fails (does not skip) when PostgreSQL is not installed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keybroker_broker::audit::{AuditLog, AuditRecord, CommitObserver, Op, PgAuditLog, tiles};
use keybroker_broker::store::PostgresStore;
use keybroker_client::audit::proof::{RootBuilder, leaf_hash, verify_consistency};
use keybroker_formats::tlog::Hash;
use softhsm_tests::postgres::TestPostgres;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn pool(pg: &TestPostgres) -> PgPool {
    let opts = PgConnectOptions::from_str(&pg.url()).unwrap();
    // Connecting applies the migrations (catalog and audit tables).
    PostgresStore::connect(opts, 4)
        .await
        .unwrap()
        .pool()
        .clone()
}

/// A running log and what stops it.
struct Running {
    log: PgAuditLog,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Running {
    async fn open(pool: &PgPool, dir: &Path) -> Result<Self, String> {
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let log = PgAuditLog::open(pool.clone(), dir, None, &tasks, &cancel)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { log, tasks, cancel })
    }

    async fn append(&self, n: u64) -> Vec<u64> {
        let calls = (0..n).map(|i| {
            let log = self.log.clone();
            tokio::spawn(async move {
                let record = AuditRecord::new(Op::Encrypt, format!("req-{i}"), "test".into());
                log.append(record).await.unwrap()
            })
        });
        let mut out = Vec::new();
        for c in calls.collect::<Vec<_>>() {
            out.push(c.await.unwrap());
        }
        out.sort_unstable();
        out
    }

    /// Waits until the mirror has published `size` records.
    async fn published(&self, size: u64) {
        let mut rx = self.log.published();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| *s >= size))
            .await
            .expect("mirror did not catch up within 20 s")
            .unwrap();
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

async fn db_head(pool: &PgPool) -> (u64, Hash) {
    let (size, root): (i64, Vec<u8>) =
        sqlx::query_as("SELECT size, root FROM audit_head WHERE id = 1")
            .fetch_one(pool)
            .await
            .unwrap();
    (
        u64::try_from(size).unwrap(),
        Hash::try_from(root.as_slice()).unwrap(),
    )
}

#[derive(Debug, Default)]
struct Counting {
    commits: AtomicU64,
    records: AtomicU64,
}

impl CommitObserver for Counting {
    fn committed(&self, records: usize, took: Duration) {
        assert!(took > Duration::ZERO);
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.records.fetch_add(records as u64, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_committed_batch_is_reported_to_the_commit_metrics() {
    let pg = TestPostgres::start().unwrap();
    let pool = pool(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let log = Running::open(&pool, dir.path()).await.unwrap();
    let seen = Arc::new(Counting::default());
    log.log.observe_commits(seen.clone());
    let indices = log.append(300).await;
    assert_eq!(indices, (0..300).collect::<Vec<_>>());
    // Every acknowledged record was in a reported batch (callers are answered after COMMIT,
    // and the observer is told before them).
    assert_eq!(seen.records.load(Ordering::SeqCst), 300);
    let commits = seen.commits.load(Ordering::SeqCst);
    assert!((1..=300).contains(&commits), "{commits} commits");
    log.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_replica_resumes_its_mirror_from_disk_and_continues_the_same_log() {
    let pg = TestPostgres::start().unwrap();
    let pool = pool(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let first = Running::open(&pool, dir.path()).await.unwrap();
    assert_eq!(first.append(600).await, (0..600).collect::<Vec<_>>());
    first.published(600).await;
    let (old_size, old_root) = db_head(&pool).await;
    assert_eq!((old_size, old_root), first.log.head());
    first.stop().await;

    // Prove start-up no longer reads the entries its tiles hold: remove the first two bundles'
    // rows (as the superuser, past the append-only trigger). Reading the whole log would find
    // a gap and refuse to start.
    pg.psql(
        "postgres",
        "ALTER TABLE audit_entries DISABLE TRIGGER USER; \
         DELETE FROM audit_entries WHERE idx < 512; \
         ALTER TABLE audit_entries ENABLE TRIGGER USER",
    )
    .unwrap();

    let second = Running::open(&pool, dir.path()).await.unwrap();
    assert_eq!(second.log.head(), (old_size, old_root));
    // It continues the same log: contiguous indices, the database's root, a consistency proof
    // from the earlier head.
    assert_eq!(second.append(100).await, (600..700).collect::<Vec<_>>());
    second.published(700).await;
    let (size, root) = db_head(&pool).await;
    assert_eq!((size, root), (700, second.log.head().1));
    let proof = second.log.consistency_proof(old_size, size).unwrap();
    verify_consistency(old_size, size, &old_root, &root, &proof).unwrap();
    // What auditors read — the tiles directory — is the whole log with that root.
    let entries = tiles::read_entries(dir.path(), size, 0, 1000).unwrap();
    assert_eq!(entries.len(), 700);
    let mut rebuilt = RootBuilder::default();
    for e in &entries {
        rebuilt.push(leaf_hash(e));
    }
    assert_eq!(rebuilt.root(), root);
    second.stop().await;

    // A replica with an empty directory must read the whole log, and finds the gap.
    let empty = tempfile::tempdir().unwrap();
    let e = Running::open(&pool, empty.path()).await.err().unwrap();
    assert!(e.contains("gap"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tiles_directory_of_another_log_stops_the_start() {
    let (pg_a, pg_b) = (
        TestPostgres::start().unwrap(),
        TestPostgres::start().unwrap(),
    );
    let (a, b) = (pool(&pg_a).await, pool(&pg_b).await);
    let dir = tempfile::tempdir().unwrap();
    let log = Running::open(&a, dir.path()).await.unwrap();
    log.append(300).await;
    log.published(300).await;
    log.stop().await;
    // Database B has a longer log of different records: the 256 leaves on disk are not its.
    let other = tempfile::tempdir().unwrap();
    let log = Running::open(&b, other.path()).await.unwrap();
    log.append(400).await;
    log.stop().await;
    let e = Running::open(&b, dir.path()).await.err().unwrap();
    assert!(
        e.contains("not a mirror of this database") && e.contains("root"),
        "{e}"
    );
    // And a shorter one: the directory holds records the database does not.
    let pg_c = TestPostgres::start().unwrap();
    let e = Running::open(&pool(&pg_c).await, dir.path())
        .await
        .err()
        .unwrap();
    assert!(e.contains("holds 256 records, the database 0"), "{e}");
}
