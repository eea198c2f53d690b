//! Lifecycle across time and restarts (issue 5): automatic rotation on a manual clock across a
//! restart, and lease revocation that survives a restart and ends with the longest lease.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keybroker_broker::keys::clock::Clock as _;
use keybroker_client::{Client, ClientError, KeyInfo, KeyPurpose, RevokeTarget};
use softhsm_tests::broker::TestBroker;
use tonic::Code;

const HOUR: i64 = 3600;

/// Polls GetKey until `done` holds (20 s budget).
async fn wait_for_key(c: &Client, name: &str, done: impl Fn(&KeyInfo) -> bool) -> KeyInfo {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let k = c.get_key(name).await.unwrap();
        if done(&k) {
            return k;
        }
        assert!(Instant::now() < deadline, "condition not reached: {k:?}");
        tokio::task::yield_now().await;
    }
}

fn auto_rotations(b: &TestBroker, key: &str) -> Vec<u64> {
    b.audit_records()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
        .filter(|v| v["op"] == "auto_rotate_key" && v["key_name"] == key)
        .map(|v| v["key_version"].as_u64().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn rotation_crosses_two_periods_across_a_restart_exactly_two_new_versions() {
    let (b, clock) = TestBroker::start_with_clock("").await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key("lc/rotating", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    let start = clock.now();
    let k = c
        .update_key("lc/rotating", None, Some(Some(Duration::from_secs(3600))))
        .await
        .unwrap();
    assert_eq!(k.next_rotation_time.unwrap().unix_timestamp(), start + HOUR);

    // First period ends while the broker runs.
    clock.advance(HOUR);
    let k = wait_for_key(&c, "lc/rotating", |k| k.primary_version == 2).await;
    assert_eq!(
        k.next_rotation_time.unwrap().unix_timestamp(),
        start + 2 * HOUR
    );

    // Second period ends while the broker is down: rotated once at start-up, not skipped.
    let mut b = b;
    b.stop_ref().await.unwrap();
    clock.advance(HOUR);
    let b = b.restart().await.unwrap();
    let c = b.client().await.unwrap();
    let k = wait_for_key(&c, "lc/rotating", |k| k.primary_version == 3).await;
    assert_eq!(k.versions.len(), 3);
    assert_eq!(
        k.next_rotation_time.unwrap().unix_timestamp(),
        start + 3 * HOUR
    );

    // A further restart inside the period adds nothing.
    let b = b.restart().await.unwrap();
    let c = b.client().await.unwrap();
    let k = c.get_key("lc/rotating").await.unwrap();
    assert_eq!(k.versions.len(), 3);
    let mut b = b;
    b.stop_ref().await.unwrap();
    assert_eq!(auto_rotations(&b, "lc/rotating"), [2, 3]);
}

fn dev_subject(b: &TestBroker) -> String {
    let text = std::fs::read_to_string(b.dir.path().join("dev-issuer/issuer.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["subject"].as_str().unwrap().to_owned()
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Err(e) => e.code().unwrap_or(Code::Unknown),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[tokio::test]
async fn revoked_principal_gets_nothing_until_the_longest_lease_ends_also_after_restart() {
    let (b, clock) = TestBroker::start_with_clock("").await.unwrap();
    let c = b.client().await.unwrap();
    let ctx = BTreeMap::new();
    c.create_key("lc/leases", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    let dk = c.generate_data_key("lc/leases", &ctx, None).await.unwrap();
    c.decrypt(&dk.ciphertext, &ctx, None).await.unwrap();
    let target = RevokeTarget::Principal {
        subject: dev_subject(&b),
        issuer: None,
    };
    let rev = c.revoke_leases(&target).await.unwrap();
    assert_eq!(rev.leases_revoked, 2);
    // max_lease_ttl defaults to 1 h.
    assert_eq!(
        rev.revoked_until.unwrap().unix_timestamp(),
        clock.now() + HOUR
    );
    let pd = Code::PermissionDenied;
    assert_eq!(code(c.generate_data_key("lc/leases", &ctx, None).await), pd);
    assert_eq!(code(c.decrypt(&dk.ciphertext, &ctx, None).await), pd);
    assert_eq!(
        code(
            c.generate_data_key_without_plaintext("lc/leases", &ctx)
                .await
        ),
        pd
    );
    // Admin operations are not releases: still allowed.
    c.get_key("lc/leases").await.unwrap();

    let b = b.restart().await.unwrap();
    let c = b.client().await.unwrap();
    assert_eq!(code(c.decrypt(&dk.ciphertext, &ctx, None).await), pd);
    clock.advance(HOUR - 1);
    assert_eq!(code(c.generate_data_key("lc/leases", &ctx, None).await), pd);
    clock.advance(1);
    c.generate_data_key("lc/leases", &ctx, None).await.unwrap();
    c.decrypt(&dk.ciphertext, &ctx, None).await.unwrap();

    // Bad targets: nothing, both, or an issuer without a subject.
    let empty = RevokeTarget::Job(String::new());
    assert_eq!(code(c.revoke_leases(&empty).await), Code::InvalidArgument);
    let mut b = b;
    b.stop_ref().await.unwrap();
    let revoked: Vec<serde_json::Value> = b
        .audit_records()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .filter(|v: &serde_json::Value| v["op"] == "revoke_leases" && v["outcome"]["code"] == "ok")
        .collect();
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(
        revoked[0]["encryption_context"]["revoke.subject"],
        dev_subject(&b).as_str()
    );
}

#[tokio::test]
async fn version_reaching_rotate_after_wraps_is_rotated_once_and_audited() {
    let (b, _clock) = TestBroker::start_with_clock("rotate_after_wraps = 3")
        .await
        .unwrap();
    let c = b.client().await.unwrap();
    let ctx = BTreeMap::new();
    c.create_key("lc/wraps", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            c.generate_data_key("lc/wraps", &ctx, None)
                .await
                .unwrap()
                .key_version,
            1
        );
    }
    let k = wait_for_key(&c, "lc/wraps", |k| k.primary_version == 2).await;
    assert_eq!(k.versions.len(), 2);
    assert_eq!(
        c.generate_data_key("lc/wraps", &ctx, None)
            .await
            .unwrap()
            .key_version,
        2
    );
    let mut b = b;
    b.stop_ref().await.unwrap();
    assert_eq!(auto_rotations(&b, "lc/wraps"), [2]);
}
