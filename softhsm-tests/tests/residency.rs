//! The residency guard end to end: a key on an HSM whose jurisdiction is not allowed cannot be
//! created or used, whatever the policy says (the test broker's dev policy allows everything),
//! and `require_caller_region` refuses callers without a matching verified region.

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

fn denied<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, Code::PermissionDenied, "{message}");
            message
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
}

const EU_ONLY: &str = "allowed_jurisdictions = [\"EU\"]";

#[tokio::test]
async fn key_cannot_be_created_on_a_us_hsm_even_when_policy_allows() {
    let b = TestBroker::start_with_us_hsm(EU_ONLY).await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    let msg = denied(
        c.create_key(
            "residency/us-create",
            KeyPurpose::DataKey,
            &none,
            Some("softhsm-us"),
        )
        .await,
    );
    assert!(msg.contains("allowed_jurisdictions"), "{msg}");
    // The EU HSM of the same broker is fine.
    c.create_key(
        "residency/eu-create",
        KeyPurpose::DataKey,
        &none,
        Some("softhsm-test"),
    )
    .await
    .unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn key_on_a_us_hsm_cannot_be_used_once_us_is_not_allowed() {
    let both = "allowed_jurisdictions = [\"EU\", \"US\"]";
    let b = TestBroker::start_with_us_hsm(both).await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_key(
        "residency/us-use",
        KeyPurpose::DataKey,
        &none,
        Some("softhsm-us"),
    )
    .await
    .unwrap();
    let dk = c
        .generate_data_key("residency/us-use", &none, None)
        .await
        .unwrap();
    // The operator removes US: the key stays in the catalog but is unusable.
    let b = b.restart_with_residency(EU_ONLY).await.unwrap();
    let c = b.client().await.unwrap();
    let msg = denied(c.generate_data_key("residency/us-use", &none, None).await);
    assert!(msg.contains("jurisdiction"), "{msg}");
    denied(c.decrypt(&dk.ciphertext, &none, None).await);
    b.stop().await.unwrap();
}

#[tokio::test]
async fn require_caller_region_refuses_callers_without_an_allowed_region() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_key("residency/region", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    // The dev issuer has no region configured, so its callers have none.
    let strict = "allowed_jurisdictions = [\"EU\"]\nrequire_caller_region = true\n\
                  allowed_regions = [\"eu-*\"]";
    let b = b.restart_with_residency(strict).await.unwrap();
    let c = b.client().await.unwrap();
    let msg = denied(c.generate_data_key("residency/region", &none, None).await);
    assert!(msg.contains("allowed_regions"), "{msg}");
    b.stop().await.unwrap();
}
