//! Policy end to end: the broker asks the Cedar policy before the key service runs, and an
//! unknown key is refused exactly like a forbidden one, so key names do not leak.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;

use keybroker_client::{ClientError, KeyPurpose};
use softhsm_tests::broker::TestBroker;
use tonic::Code;

/// The dev namespace may administer keys, but use only keys labelled `classification=public`.
const PUBLIC_ONLY: &str = r#"
@id("dev-admin")
permit (principal, action in [Keybroker::Action::"CreateKey", Keybroker::Action::"GetKey",
  Keybroker::Action::"ListKeys", Keybroker::Action::"RotateKey"], resource)
when { principal.namespace == "dev" };

@id("dev-public-data")
permit (principal, action, resource)
when { principal.namespace == "dev" && resource.hasTag("classification") &&
       resource.getTag("classification") == "public" };
"#;

fn status<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (Code, String) {
    match r {
        Err(ClientError::Status { code, message, .. }) => (code, message),
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test]
async fn policy_denies_before_the_key_service_and_unknown_keys_look_the_same() {
    let b = TestBroker::start().await.unwrap();
    std::fs::write(b.dir.path().join("dev-policy.cedar"), PUBLIC_ONLY).unwrap();
    let b = b
        .restart_with_residency("allowed_jurisdictions = [\"EU\"]")
        .await
        .unwrap();
    let c = b.client().await.unwrap();
    let public: BTreeMap<String, String> =
        [("classification".to_owned(), "public".to_owned())].into();
    let none = BTreeMap::new();
    c.create_key("policy/public", KeyPurpose::DataKey, &public, None)
        .await
        .unwrap();
    c.create_key("policy/secret", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    c.generate_data_key("policy/public", &none, None)
        .await
        .unwrap();
    let forbidden = status(c.generate_data_key("policy/secret", &none, None).await);
    let unknown = status(c.generate_data_key("policy/no-such-key", &none, None).await);
    assert_eq!(
        forbidden,
        (Code::PermissionDenied, "permission denied".to_owned())
    );
    assert_eq!(unknown, forbidden);
    b.stop().await.unwrap();
}
