//! `keybroker drill revoke|compromise` end to end: the real CLI binary against a real broker.
//! The drills must refuse a key outside `--scope` (and a missing `--scope`) before any call,
//! prove that no probe started after DisableKey returned succeeded, and move ciphertext files
//! to a fresh version.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::process::{Command, Output};

use keybroker_client::{KeyPurpose, KeyState};
use softhsm_tests::broker::TestBroker;
use softhsm_tests::workspace_bin;

/// Runs the CLI against `b` (blocking; call from spawn_blocking).
fn cli(b: &TestBroker, args: &[&str]) -> Output {
    let token = b.token_file().unwrap();
    Command::new(workspace_bin("keybroker").unwrap())
        .args(args)
        .env(
            "KEYBROKER_ENDPOINT",
            format!("https://localhost:{}", b.addr.port()),
        )
        .env("KEYBROKER_CA", b.ca())
        .env("KEYBROKER_TOKEN_FILE", token)
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_drill_proves_the_next_request_is_denied_and_respects_scope() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_key("drills/a", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    c.create_key("prod/b", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    let b = std::sync::Arc::new(b);
    let b2 = b.clone();
    let (no_scope, outside, run) = tokio::task::spawn_blocking(move || {
        (
            cli(&b2, &["drill", "revoke", "drills/a"]),
            cli(&b2, &["drill", "revoke", "prod/b", "--scope", "drills/"]),
            cli(&b2, &["drill", "revoke", "drills/a", "--scope", "drills/"]),
        )
    })
    .await
    .unwrap();
    assert!(!no_scope.status.success());
    assert!(String::from_utf8_lossy(&no_scope.stderr).contains("--scope"));
    assert!(!outside.status.success());
    assert!(String::from_utf8_lossy(&outside.stderr).contains("outside the drill scope"));
    // Nothing was changed on the key outside the scope.
    let prod = c.get_key("prod/b").await.unwrap();
    assert_eq!(prod.state, KeyState::Enabled);

    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let r = json(&run);
    assert_eq!(r["passed"], true);
    assert_eq!(r["probes"]["succeeded_after_disable_returned"], 0);
    assert!(
        r["probes"]["started_after_disable_returned"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(r["archived_denial"], "FAILED_PRECONDITION");
    assert_eq!(r["works_again"], true);
    assert!(r["time_to_deny_ms"].as_f64().is_some());
    assert_eq!(
        c.get_key("drills/a").await.unwrap().state,
        KeyState::Enabled
    );
    eprintln!("drill revoke report: {r}");
    assert_audit_span(
        &b,
        &r,
        &[
            "disable_key:allow",
            "enable_key:allow",
            "generate_data_key:allow",
            "generate_data_key:deny",
            "get_key:allow",
        ],
    );

    // --keep-disabled leaves it disabled.
    let b3 = b.clone();
    let kept = tokio::task::spawn_blocking(move || {
        cli(
            &b3,
            &[
                "drill",
                "revoke",
                "drills/a",
                "--scope",
                "drills/",
                "--keep-disabled",
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        kept.status.success(),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    assert_eq!(
        c.get_key("drills/a").await.unwrap().state,
        KeyState::Disabled
    );
}

/// The report's `audit` names exactly the records of the drill's calls: complete, every listed
/// index is a record with the drill's request id prefix, and no such record is left out.
fn assert_audit_span(b: &TestBroker, report: &serde_json::Value, ops: &[&str]) {
    let span = &report["audit"];
    assert_eq!(span["complete"], true, "{span:#}");
    let prefix = format!("drill-{}-", report["drill_id"].as_str().unwrap());
    assert!(
        span["request_id_prefix"]
            .as_str()
            .unwrap()
            .starts_with("drill-")
    );
    let records: Vec<serde_json::Value> = b
        .audit_records()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    let mine: Vec<u64> = records
        .iter()
        .filter(|r| r["request_id"].as_str().unwrap().starts_with(&prefix))
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    let listed: Vec<u64> = span["indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap())
        .collect();
    assert_eq!(listed, mine, "{span:#}");
    assert_eq!(span["first_index"], mine[0]);
    assert_eq!(span["last_index"], *mine.last().unwrap());
    for op in ops {
        assert!(
            span["by_op"][op].as_u64().unwrap_or(0) >= 1,
            "{op}: {span:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compromise_drill_moves_files_to_a_new_version_and_disables_the_old_one() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    let ctx = BTreeMap::from([("run".to_owned(), "c".to_owned())]);
    c.create_key("drills/c", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    c.create_key("prod/d", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    let dir = b.dir.path().to_owned();
    let mine = c.generate_data_key("drills/c", &ctx, None).await.unwrap();
    let other = c.generate_data_key("prod/d", &ctx, None).await.unwrap();
    let raw = dir.join("a.kbct");
    let foreign = dir.join("foreign.kbct");
    std::fs::write(&raw, &mine.ciphertext).unwrap();
    std::fs::write(&foreign, &other.ciphertext).unwrap();
    let b = std::sync::Arc::new(b);
    let b2 = b.clone();
    let (raw2, foreign2) = (raw.clone(), foreign.clone());
    let out = tokio::task::spawn_blocking(move || {
        cli(
            &b2,
            &[
                "drill",
                "compromise",
                "drills/c",
                "--scope",
                "drills/",
                "--context",
                "run=c",
                raw2.to_str().unwrap(),
                foreign2.to_str().unwrap(),
            ],
        )
    })
    .await
    .unwrap();
    // One file of another key: reported as not moved, so the drill fails; nothing sent for it.
    assert!(!out.status.success());
    let r = json(&out);
    assert_audit_span(
        &b,
        &r,
        &["disable_key:allow", "rotate_key:allow", "re_encrypt:allow"],
    );
    assert_eq!(r["compromised_version"], 1);
    assert_eq!(r["new_version"], 2);
    assert_eq!(r["moved"][0]["to_version"], 2);
    assert!(
        r["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("not sent")
    );
    let k = c.get_key("drills/c").await.unwrap();
    assert_eq!(k.state, KeyState::Enabled);
    assert_eq!(k.versions[0].state, KeyState::Disabled);
    // The moved file opens under v2 with the same data key; the old ciphertext does not.
    let moved = std::fs::read(&raw).unwrap();
    let opened = c.decrypt(&moved, &ctx, None).await.unwrap();
    assert_eq!(
        (opened.key_version, &*opened.plaintext),
        (2, &*mine.plaintext)
    );
    assert!(c.decrypt(&mine.ciphertext, &ctx, None).await.is_err());
    // The foreign key was not touched.
    assert_eq!(std::fs::read(&foreign).unwrap(), other.ciphertext);
    assert_eq!(c.get_key("prod/d").await.unwrap().versions.len(), 1);
}
