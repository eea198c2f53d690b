//! Disk used per audit record by a tiles directory (issue 22): a replica's mirror keeps only
//! the partial tiles that the checkpoint in its directory (and later sizes) need, so after
//! 10,000 records it uses at most twice what the single node's directory uses — where it used
//! to keep a partial tile for almost every tree width (55–66 KB per record). Both directories
//! still verify with the checker of `keybroker audit verify`.
//!
//! Measured: `cargo nextest run -p softhsm-tests --test audit_disk --no-capture`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybroker_broker::audit::checkpoint::{self, Latest, Signer, Sink};
use keybroker_broker::audit::{AuditLog, AuditRecord, FileAuditLog, Op, PgAuditLog, pg_origin};
use keybroker_broker::hsm::HsmPool;
use keybroker_broker::store::PostgresStore;
use keybroker_client::audit::note::VerifierKey;
use keybroker_client::audit::tiles::verify_dir;
use softhsm_tests::SoftHsmToken;
use softhsm_tests::postgres::TestPostgres;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const RECORDS: u64 = 10_000;
/// Concurrent appenders: batches of a few records, as under load.
const WRITERS: u64 = 16;

/// (files, bytes allocated on disk) under `dir`.
fn usage(dir: &Path) -> (u64, u64) {
    let mut stack = vec![dir.to_path_buf()];
    let (mut files, mut bytes) = (0, 0);
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                bytes += m.blocks() * 512;
            }
        }
    }
    (files, bytes)
}

async fn fill(log: Arc<dyn AuditLog>) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let log = log.clone();
        tasks.spawn(async move {
            for i in 0..RECORDS / WRITERS {
                let mut r =
                    AuditRecord::new(Op::GenerateDataKey, format!("req-{w}-{i}"), "t".into());
                r.key_name = Some("datasets/disk".into());
                log.append(r).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

/// Waits until `dir/checkpoint` covers every record and verifies; returns its size.
async fn checkpointed(dir: &Path, vkey: &str) -> u64 {
    let vkey = VerifierKey::parse(vkey).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(v) = verify_dir(dir, &vkey)
            && v.checkpoint.size >= RECORDS
        {
            return v.checkpoint.size;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of {RECORDS} records in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_mirror_uses_at_most_twice_the_single_nodes_disk_per_record() {
    let token = SoftHsmToken::new("disk").unwrap();
    let hsm = HsmPool::connect(token.hsm_settings("t")).await.unwrap();
    let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());

    // The single node: segment log + tiles, checkpoints into the directory.
    let single = tempfile::tempdir().unwrap();
    let path = single.path().to_path_buf();
    let log: Arc<dyn AuditLog> = Arc::new(
        tokio::task::spawn_blocking(move || FileAuditLog::open(&path, |_| {}))
            .await
            .unwrap()
            .unwrap(),
    );
    let signer = Signer::open_local(hsm.clone(), "test/single".into(), single.path())
        .await
        .unwrap();
    let vkey = signer.vkey();
    tasks.spawn(checkpoint::run(
        signer,
        log.clone(),
        Sink::Dir(single.path().to_path_buf()),
        Latest::default(),
        cancel.clone(),
    ));
    fill(log).await;
    checkpointed(single.path(), &vkey).await;
    let tiles = single.path().join("tile");
    let (single_files, single_bytes) = usage(&tiles);

    // A replica: the PostgreSQL log, its mirror, checkpoints through the database.
    let pg = TestPostgres::start().unwrap();
    let store = PostgresStore::connect(PgConnectOptions::from_str(&pg.url()).unwrap(), 8)
        .await
        .unwrap();
    let pool = store.pool().clone();
    let mirror = tempfile::tempdir().unwrap();
    let origin = pg_origin(&pool).await.unwrap();
    let signer = Signer::open_shared(hsm.clone(), origin, &pool, mirror.path(), "r1")
        .await
        .unwrap();
    let vkey = signer.vkey();
    let pg_log = PgAuditLog::open(
        pool.clone(),
        mirror.path(),
        Some((signer.clone(), Latest::default())),
        &tasks,
        &cancel,
    )
    .await
    .unwrap();
    let log: Arc<dyn AuditLog> = Arc::new(pg_log);
    tasks.spawn(checkpoint::run(
        signer,
        log.clone(),
        Sink::Database(pool.clone()),
        Latest::default(),
        cancel.clone(),
    ));
    fill(log).await;
    checkpointed(mirror.path(), &vkey).await;
    let (mirror_files, mirror_bytes) = usage(&mirror.path().join("tile"));

    cancel.cancel();
    tasks.close();
    tasks.wait().await;

    let per = |b: u64| b as f64 / RECORDS as f64;
    eprintln!(
        "tiles after {RECORDS} records: single node {single_files} files, {:.0} B/record; \
         replica mirror {mirror_files} files, {:.0} B/record (ratio {:.2})",
        per(single_bytes),
        per(mirror_bytes),
        mirror_bytes as f64 / single_bytes as f64
    );
    assert!(
        mirror_bytes <= 2 * single_bytes,
        "the mirror uses {mirror_bytes} B, the single node {single_bytes} B"
    );
    // Full tiles dominate: 40 level-0 tiles, their bundles, a level-1 tile — and few partials.
    assert!(mirror_files < 200, "{mirror_files} files in the mirror");
}
