//! The throughput measurement of the group commit (an ignored test): durable records/s and the
//! latency an append adds to a key operation, with and without fdatasync.

#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    reason = "measurement code"
)]

use super::*;
use crate::audit::Op;

fn record(n: usize) -> AuditRecord {
    AuditRecord::new(Op::GenerateDataKey, format!("req-{n}"), "bench".into())
}

/// Throughput and added latency: `AUDIT_BENCH_DIR=target cargo test -p keybroker-broker
/// --release --lib -- --ignored --nocapture group_commit_throughput`. Durable records/s and
/// the p50/p99 latency an append adds to a key operation, at 1, 16 and 64 concurrent
/// clients, with fdatasync and without (the test-only baseline), and one fsync per record.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
#[ignore = "measurement, not a check"]
async fn group_commit_throughput() {
    let mut baseline = std::collections::HashMap::new();
    println!("mode,clients,records,secs,records_per_s,commits,p50_us,p99_us,max_us");
    for (name, max_batch, sync, clients) in [
        ("no-fsync", MAX_BATCH, false, 1),
        ("no-fsync", MAX_BATCH, false, 16),
        ("no-fsync", MAX_BATCH, false, 64),
        ("group-commit", MAX_BATCH, true, 1),
        ("group-commit", MAX_BATCH, true, 16),
        ("group-commit", MAX_BATCH, true, 64),
        ("fsync-per-record", 1, true, 64),
    ] {
        let dir =
            tempfile::tempdir_in(std::env::var("AUDIT_BENCH_DIR").unwrap_or_else(|_| ".".into()))
                .unwrap();
        let mut tail = segment::open(dir.path(), |_| {}).unwrap();
        tail.skip_sync = !sync;
        let publisher = Publisher::rebuild(dir.path(), Vec::new());
        let log = FileAuditLog::start(tail, publisher, max_batch).unwrap();
        // Enough records for a few seconds per run; a single synchronous client is slow.
        let total = match (sync, clients) {
            (true, 1) => 2_000,
            (_, _) if max_batch == 1 => 2_000,
            _ => 40_000,
        };
        let per_client = total / clients;
        let started = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let log = log.clone();
            tasks.spawn(async move {
                let mut micros = Vec::with_capacity(per_client);
                for n in 0..per_client {
                    let t = std::time::Instant::now();
                    log.append(record(c * per_client + n)).await.unwrap();
                    micros.push(t.elapsed().as_micros() as u64);
                }
                micros
            });
        }
        // Every latency, sorted: exact percentiles (the runs hold at most 40 000).
        let mut micros = Vec::new();
        while let Some(r) = tasks.join_next().await {
            micros.extend(r.unwrap());
        }
        micros.sort_unstable();
        let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
        let secs = started.elapsed().as_secs_f64();
        let rate = (clients * per_client) as f64 / secs;
        let (p50, p99) = (at(0.5), at(0.99));
        println!(
            "{name},{clients},{},{secs:.2},{rate:.0},{},{p50},{p99},{}",
            clients * per_client,
            log.commits(),
            at(1.0)
        );
        if !sync {
            baseline.insert(clients, (rate, p50, p99));
        } else if let Some((b_rate, b50, b99)) = baseline.get(&clients) {
            println!(
                "  ratio vs no-fsync at {clients} clients: throughput x{:.2}, p50 x{:.1}, p99 x{:.1}",
                rate / b_rate,
                p50 as f64 / (*b50).max(1) as f64,
                p99 as f64 / (*b99).max(1) as f64
            );
        }
    }
}
