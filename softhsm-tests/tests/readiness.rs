//! `/readyz` follows the HSM: it turns false within about a second (one probe period) when the
//! token disappears, and true again once it is back, without a restart. (The audit side: a
//! full disk turns readiness false until restart, by design — see `audit.rs`,
//! `a_full_audit_disk_refuses_key_release_goes_not_serving_at_once_and_recovers_on_restart`; the database side is the PostgreSQL
//! work's.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::time::{Duration, Instant};

use keybroker_broker::config::HttpConfig;
use softhsm_tests::broker::TestBroker;
use softhsm_tests::https::{Reply, get_plain};

/// Polls `/readyz` until `want(reply)`, at most `limit`; returns the time it took.
async fn until(
    addr: std::net::SocketAddr,
    limit: Duration,
    want: impl Fn(&Reply) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let r = get_plain(addr, "/readyz").await.unwrap();
        if want(&r) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "not reached within {limit:?}: {:?}",
            r.json
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_false_when_the_token_is_removed_and_true_when_it_returns() {
    let b = TestBroker::start_with(|c| {
        c.http = Some(HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: false,
            transit: None,
            xks: None,
        });
    })
    .await
    .unwrap();
    let addr = b.http_addr.unwrap();
    let hsm = |r: &Reply| r.json["components"]["hsm:softhsm-test"]["ready"].clone();
    until(addr, Duration::from_secs(10), |r| r.status == 200).await;

    b.token.unplug().unwrap();
    let took = until(addr, Duration::from_secs(3), |r| {
        r.status == 503 && hsm(r) == false
    })
    .await;
    eprintln!("readyz false {took:?} after the token was removed");
    assert!(took <= Duration::from_millis(2000), "{took:?}");
    let r = get_plain(addr, "/readyz").await.unwrap();
    assert_eq!(r.json["components"]["audit"]["ready"], true, "{:?}", r.json);

    b.token.plug_in().unwrap();
    let took = until(addr, Duration::from_secs(10), |r| {
        r.status == 200 && hsm(r) == true
    })
    .await;
    eprintln!("readyz true {took:?} after the token returned");
    b.stop().await.unwrap();
}
