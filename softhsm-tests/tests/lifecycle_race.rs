//! DisableKey under load: 16 clients hammer GenerateDataKey and Decrypt on one key; once
//! DisableKey has returned, no request that started afterwards succeeds — judged by the
//! clients' own timestamps and cross-checked against the audit log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keybroker_client::KeyPurpose;
use softhsm_tests::broker::TestBroker;
use tonic::Code;

const CLIENTS: usize = 16;

/// One request as a client saw it.
struct Sample {
    started: Instant,
    finished: Instant,
    outcome: Result<(), Code>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_request_started_after_disable_returned_succeeds_under_16_clients() {
    let b = TestBroker::start().await.unwrap();
    let admin = b.client().await.unwrap();
    let ctx = BTreeMap::from([("probe".to_owned(), "race".to_owned())]);
    admin
        .create_key("lc/race", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    let probe = admin
        .generate_data_key("lc/race", &ctx, None)
        .await
        .unwrap();
    let ok_count = Arc::new(AtomicUsize::new(0));
    let after_disable = Arc::new(AtomicUsize::new(0));
    let disabled = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let c = b.client().await.unwrap();
        let (ctx, ct) = (ctx.clone(), probe.ciphertext.clone());
        let (ok_count, after_disable) = (ok_count.clone(), after_disable.clone());
        let (disabled, stop) = (disabled.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let seen_disabled = disabled.load(Ordering::SeqCst);
                let started = Instant::now();
                let outcome = if i % 2 == 0 {
                    c.generate_data_key("lc/race", &ctx, None).await.map(drop)
                } else {
                    c.decrypt(&ct, &ctx, None).await.map(drop)
                };
                let outcome = outcome.map_err(|e| e.code().unwrap_or(Code::Unknown));
                if outcome.is_ok() {
                    ok_count.fetch_add(1, Ordering::SeqCst);
                }
                if seen_disabled {
                    after_disable.fetch_add(1, Ordering::SeqCst);
                }
                samples.push(Sample {
                    started,
                    finished: Instant::now(),
                    outcome,
                });
            }
            samples
        }));
    }
    // Let the load build up, then disable.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ok_count.load(Ordering::SeqCst) < 200 {
        assert!(Instant::now() < deadline, "load did not build up");
        tokio::task::yield_now().await;
    }
    let disable_called = Instant::now();
    admin.disable_key("lc/race", 0).await.unwrap();
    let disable_returned = Instant::now();
    disabled.store(true, Ordering::SeqCst);
    while after_disable.load(Ordering::SeqCst) < 10 * CLIENTS {
        assert!(Instant::now() < deadline, "load stopped after disable");
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }

    let started_after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started >= disable_returned)
        .collect();
    assert!(started_after.len() >= 10 * CLIENTS);
    for s in &started_after {
        assert_eq!(s.outcome, Err(Code::FailedPrecondition));
    }
    let first_denied = samples
        .iter()
        .filter(|s| s.outcome == Err(Code::FailedPrecondition))
        .map(|s| s.finished)
        .min()
        .unwrap();
    eprintln!(
        "16 clients: {} requests, {} after DisableKey returned (all denied); DisableKey took {:?}; \
         first denial {:?} after DisableKey returned",
        samples.len(),
        started_after.len(),
        disable_returned - disable_called,
        first_denied.saturating_duration_since(disable_returned)
    );

    // The audit log tells the same story: exactly as many granted releases as the clients saw
    // (none hidden), and the disable among them.
    let client_ok = samples.iter().filter(|s| s.outcome.is_ok()).count();
    let client_denied = samples.len() - client_ok;
    let mut b = b;
    b.stop_ref().await.unwrap();
    let records: Vec<serde_json::Value> = b
        .audit_records()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .filter(|v: &serde_json::Value| v["key_name"] == "lc/race")
        .collect();
    let released = records
        .iter()
        .filter(|v| {
            (v["op"] == "generate_data_key" || v["op"] == "decrypt") && v["outcome"]["code"] == "ok"
        })
        .count();
    let denied = records
        .iter()
        .filter(|v| v["outcome"]["code"] == "failed_precondition")
        .count();
    assert_eq!(released, client_ok + 1, "the +1 is the probe");
    assert_eq!(denied, client_denied);
    // The disable itself is on record (its record may follow the first denials: the catalog
    // change commits before the audit append of the DisableKey call completes).
    assert!(
        records
            .iter()
            .any(|v| v["op"] == "disable_key" && v["outcome"]["code"] == "ok")
    );
}
