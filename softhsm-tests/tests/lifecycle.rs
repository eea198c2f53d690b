//! Key lifecycle end to end (issue 5): disable/enable of keys and versions,
//! min_decryption_version, scheduled destruction and its cancellation, bad input, and admin
//! authorization — real SoftHSM token, real broker, real client. Deadlines run on a manual
//! clock the test advances (`TestBroker::start_with_clock`), never on sleeps.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use keybroker_client::{ClientError, KeyPurpose, KeyState};
use softhsm_tests::broker::TestBroker;
use tonic::Code;

fn ctx() -> BTreeMap<String, String> {
    BTreeMap::from([("dataset".to_owned(), "lifecycle".to_owned())])
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Err(e) => e.code().unwrap_or(Code::Unknown),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn message<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Status { message, .. }) => message,
        other => panic!("expected a status, got {other:?}"),
    }
}

/// Ops of the audit records, in order.
fn audit_ops(b: &TestBroker) -> Vec<(String, String, String)> {
    b.audit_records()
        .unwrap()
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            (
                v["op"].as_str().unwrap_or_default().to_owned(),
                v["key_name"].as_str().unwrap_or_default().to_owned(),
                v["outcome"]["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn disabled_key_denies_every_use_on_next_request_and_enable_restores_it() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_key("lc/data", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    c.create_key("lc/seal", KeyPurpose::Seal, &none, None)
        .await
        .unwrap();
    let dk = c.generate_data_key("lc/data", &ctx(), None).await.unwrap();
    let sealed = c.encrypt("lc/seal", b"unseal me", &ctx()).await.unwrap();

    let k = c.disable_key("lc/data", 0).await.unwrap();
    assert_eq!(k.state, KeyState::Disabled);
    c.disable_key("lc/seal", 0).await.unwrap();
    let fp = Code::FailedPrecondition;
    assert_eq!(code(c.generate_data_key("lc/data", &ctx(), None).await), fp);
    assert_eq!(
        code(
            c.generate_data_key_without_plaintext("lc/data", &ctx())
                .await
        ),
        fp
    );
    assert_eq!(code(c.decrypt(&dk.ciphertext, &ctx(), None).await), fp);
    assert_eq!(code(c.re_encrypt(&dk.ciphertext, &ctx()).await), fp);
    assert_eq!(code(c.encrypt("lc/seal", b"x", &ctx()).await), fp);
    assert_eq!(code(c.decrypt(&sealed.ciphertext, &ctx(), None).await), fp);
    assert_eq!(
        message(c.generate_data_key("lc/data", &ctx(), None).await),
        "key is disabled"
    );
    // Disabling twice is idempotent.
    assert_eq!(
        c.disable_key("lc/data", 0).await.unwrap().state,
        KeyState::Disabled
    );

    c.enable_key("lc/data", 0).await.unwrap();
    c.enable_key("lc/seal", 0).await.unwrap();
    let opened = c.decrypt(&dk.ciphertext, &ctx(), None).await.unwrap();
    assert_eq!(*opened.plaintext, *dk.plaintext);
    c.generate_data_key("lc/data", &ctx(), None).await.unwrap();
    c.re_encrypt(&dk.ciphertext, &ctx()).await.unwrap();
    c.encrypt("lc/seal", b"x", &ctx()).await.unwrap();
    c.decrypt(&sealed.ciphertext, &ctx(), None).await.unwrap();

    let ops = audit_ops(&b);
    for op in ["disable_key", "enable_key"] {
        assert!(
            ops.iter()
                .any(|(o, k, code)| o == op && k == "lc/data" && code == "ok"),
            "{op} not audited: {ops:?}"
        );
    }
    assert!(
        ops.iter()
            .any(|(o, k, code)| o == "decrypt" && k == "lc/data" && code == "failed_precondition")
    );
    b.stop().await.unwrap();
}

#[tokio::test]
async fn version_disable_and_min_decryption_version_deny_exactly_the_old_ciphertexts() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key("lc/versions", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    let old = c
        .generate_data_key("lc/versions", &ctx(), None)
        .await
        .unwrap();
    c.rotate_key("lc/versions").await.unwrap();
    let new = c
        .generate_data_key("lc/versions", &ctx(), None)
        .await
        .unwrap();
    assert_eq!((old.key_version, new.key_version), (1, 2));
    let fp = Code::FailedPrecondition;

    let k = c.disable_key("lc/versions", 1).await.unwrap();
    assert_eq!(k.state, KeyState::Enabled);
    assert_eq!(k.versions[0].state, KeyState::Disabled);
    assert_eq!(code(c.decrypt(&old.ciphertext, &ctx(), None).await), fp);
    assert_eq!(code(c.re_encrypt(&old.ciphertext, &ctx()).await), fp);
    c.decrypt(&new.ciphertext, &ctx(), None).await.unwrap();
    c.enable_key("lc/versions", 1).await.unwrap();
    c.decrypt(&old.ciphertext, &ctx(), None).await.unwrap();

    // min_decryption_version = 2: version 1 ciphertexts are refused, version 2 open.
    let k = c.update_key("lc/versions", Some(2), None).await.unwrap();
    assert_eq!(k.min_decryption_version, 2);
    assert_eq!(code(c.decrypt(&old.ciphertext, &ctx(), None).await), fp);
    assert!(
        message(c.decrypt(&old.ciphertext, &ctx(), None).await)
            .contains("below min_decryption_version 2")
    );
    c.decrypt(&new.ciphertext, &ctx(), None).await.unwrap();
    // Above the primary version: refused, nothing changed.
    assert_eq!(
        code(c.update_key("lc/versions", Some(3), None).await),
        Code::InvalidArgument
    );
    assert_eq!(
        c.get_key("lc/versions")
            .await
            .unwrap()
            .min_decryption_version,
        2
    );
    c.update_key("lc/versions", Some(1), None).await.unwrap();
    c.decrypt(&old.ciphertext, &ctx(), None).await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn bad_lifecycle_input_is_refused_and_changes_nothing() {
    let (b, clock) = TestBroker::start_with_clock("").await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key("lc/bad", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    // Below the floor (default 7 days).
    let r = c
        .schedule_key_destruction("lc/bad", Some(Duration::from_secs(3600)))
        .await;
    let m = message(r);
    assert!(m.contains("waiting_period must be between 7days"), "{m}");
    assert_eq!(c.get_key("lc/bad").await.unwrap().state, KeyState::Enabled);
    // Default wait is 7 days.
    let k = c.schedule_key_destruction("lc/bad", None).await.unwrap();
    assert_eq!(k.state, KeyState::PendingDestruction);
    let deadline = k.destruction_time.unwrap().unix_timestamp();
    assert_eq!(deadline, clock_now(&clock) + 7 * 86_400);
    // Scheduling twice, enabling or disabling while pending: refused, deadline unchanged.
    let fp = Code::FailedPrecondition;
    assert_eq!(code(c.schedule_key_destruction("lc/bad", None).await), fp);
    assert_eq!(code(c.enable_key("lc/bad", 0).await), fp);
    assert_eq!(code(c.disable_key("lc/bad", 0).await), fp);
    assert_eq!(code(c.enable_key("lc/bad", 1).await), fp);
    let k = c.get_key("lc/bad").await.unwrap();
    assert_eq!(k.state, KeyState::PendingDestruction);
    assert_eq!(k.destruction_time.unwrap().unix_timestamp(), deadline);
    // Unknown keys look like forbidden ones.
    assert_eq!(
        code(c.disable_key("lc/no-such-key", 0).await),
        Code::PermissionDenied
    );
    b.stop().await.unwrap();
}

fn clock_now(clock: &keybroker_broker::keys::clock::ManualClock) -> i64 {
    use keybroker_broker::keys::clock::Clock as _;
    clock.now()
}

#[tokio::test]
async fn cancel_before_the_deadline_keeps_the_key_disabled_then_enable_works() {
    let (b, clock) = TestBroker::start_with_clock("").await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key("lc/cancel", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    let dk = c
        .generate_data_key("lc/cancel", &ctx(), None)
        .await
        .unwrap();
    c.schedule_key_destruction("lc/cancel", None).await.unwrap();
    assert_eq!(
        code(c.decrypt(&dk.ciphertext, &ctx(), None).await),
        Code::FailedPrecondition
    );
    clock.advance(7 * 86_400 - 10);
    let k = c.cancel_key_destruction("lc/cancel").await.unwrap();
    assert_eq!(k.state, KeyState::Disabled);
    assert!(k.destruction_time.is_none());
    // Past the old deadline: nothing is destroyed.
    clock.advance(3600);
    c.enable_key("lc/cancel", 0).await.unwrap();
    let opened = c.decrypt(&dk.ciphertext, &ctx(), None).await.unwrap();
    assert_eq!(*opened.plaintext, *dk.plaintext);
    assert_eq!(
        code(c.cancel_key_destruction("lc/cancel").await),
        Code::FailedPrecondition
    );
    b.stop().await.unwrap();
}

/// The dev namespace may use keys and read the catalog, but not change key states.
const NO_LIFECYCLE: &str = r#"
@id("dev-use-and-read")
permit (principal, action in [Keybroker::Action::"CreateKey", Keybroker::Action::"GetKey",
  Keybroker::Action::"GenerateDataKey", Keybroker::Action::"Decrypt"], resource)
when { principal.namespace == "dev" };
"#;

#[tokio::test]
async fn admin_operations_need_their_own_cedar_action() {
    let b = TestBroker::start().await.unwrap();
    std::fs::write(b.dir.path().join("dev-policy.cedar"), NO_LIFECYCLE).unwrap();
    let b = b
        .restart_with_residency("allowed_jurisdictions = [\"EU\"]")
        .await
        .unwrap();
    let c = b.client().await.unwrap();
    c.create_key("lc/authz", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    let pd = Code::PermissionDenied;
    assert_eq!(code(c.disable_key("lc/authz", 0).await), pd);
    assert_eq!(code(c.enable_key("lc/authz", 0).await), pd);
    assert_eq!(code(c.rotate_key("lc/authz").await), pd);
    assert_eq!(code(c.update_key("lc/authz", Some(1), None).await), pd);
    assert_eq!(code(c.schedule_key_destruction("lc/authz", None).await), pd);
    assert_eq!(code(c.cancel_key_destruction("lc/authz").await), pd);
    let job = keybroker_client::RevokeTarget::Job("j".into());
    assert_eq!(code(c.revoke_leases(&job).await), pd);
    assert_eq!(
        c.get_key("lc/authz").await.unwrap().state,
        KeyState::Enabled
    );
    c.generate_data_key("lc/authz", &ctx(), None).await.unwrap();
    let denied = audit_ops(&b)
        .into_iter()
        .filter(|(o, _, code)| o == "disable_key" && code == "permission_denied")
        .count();
    assert_eq!(denied, 1);
    b.stop().await.unwrap();
}
