//! A micro-benchmark of the catalog statements on the single node's release path, on a real
//! SQLite file (WAL, `synchronous=FULL`): the lease rows written after each release, the
//! group-committed gate of a bare store, the block reservation of use counts, and the key read
//! of a cache miss. Ignored by default; run it in release mode:
//!
//! `cargo test --release -p keybroker-broker --lib store::bench -- --ignored --nocapture`

use std::collections::BTreeMap;
use std::time::Instant;

use super::*;

const KEY: &str = "bench/k";

fn lease(n: usize) -> LeaseRecord {
    LeaseRecord {
        lease_id: format!("lease-{n:08}"),
        key_name: KEY.into(),
        version: 1,
        op: "GenerateDataKey",
        issuer: "iss".into(),
        subject: "sub".into(),
        job_id: Some("job-1".into()),
        issued_at: 10,
        expires_at: 1000,
    }
}

fn report(what: &str, n: usize, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss, reason = "a rate for humans")]
    let per = secs * 1e6 / n as f64;
    println!("{what:<48} {n:>7} in {secs:>7.3} s = {per:>8.2} µs each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run in release mode with --ignored --nocapture"]
async fn release_path_statements() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("catalog.db"))
        .await
        .unwrap();
    s.create_key(&NewKey {
        name: KEY.into(),
        purpose: Purpose::DataKey,
        labels: BTreeMap::from([("stage".into(), "dev".into())]),
        hsm_id: "hsm-a".into(),
        created_at: 1,
        rotation_period_secs: None,
        next_rotation_at: None,
    })
    .await
    .unwrap();
    s.set_version_state(KEY, 1, VersionState::Enabled)
        .await
        .unwrap();

    // Lease rows after their audit records, in batches of 64 (the background writer's shape).
    let (batches, per_batch) = (200, 64);
    let leases: Vec<(LeaseRecord, u64)> = (0..batches * per_batch)
        .map(|i| (lease(i), u64::try_from(i).unwrap()))
        .collect();
    let t = Instant::now();
    for chunk in leases.chunks(per_batch) {
        s.insert_leases(chunk).await.unwrap();
    }
    report("insert_leases (batches of 64), per lease", leases.len(), t);

    // The bare store's gate: 64 callers at a time share group commits.
    let (rounds, callers) = (100, 64);
    let t = Instant::now();
    for round in 0..rounds {
        let mut set = tokio::task::JoinSet::new();
        for c in 0..callers {
            let s = s.clone();
            let l = lease(1_000_000 + round * callers + c);
            set.spawn(async move {
                let gate = ReleaseGate {
                    key: KEY,
                    wrap_version: Some(1),
                    open_version: None,
                    lease: Some(&l),
                    who: Who {
                        issuer: "iss",
                        subject: "sub",
                        job_id: Some("job-1"),
                    },
                    now: 10,
                };
                s.release(&gate).await.unwrap()
            });
        }
        while let Some(done) = set.join_next().await {
            assert!(matches!(done.unwrap(), GateOutcome::Open(_)));
        }
    }
    report(
        "release (group commit, 64 callers), per gate",
        rounds * callers,
        t,
    );

    let n = 2000;
    let t = Instant::now();
    for _ in 0..n {
        s.reserve_wraps(KEY, 1, WRAP_BLOCK).await.unwrap().unwrap();
    }
    report("reserve_wraps", n, t);

    let t = Instant::now();
    for _ in 0..n {
        s.get_key(KEY).await.unwrap().unwrap();
    }
    report("get_key (cache miss)", n, t);

    let t = Instant::now();
    for _ in 0..n {
        assert!(s.active_revocations(10).await.unwrap().is_empty());
    }
    report("active_revocations", n, t);
}
