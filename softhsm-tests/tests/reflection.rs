//! A client that is not ours (Python grpcio) discovers the API through server reflection alone
//! and makes a GenerateDataKey -> Decrypt round trip.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use keybroker_client::KeyPurpose;
use softhsm_tests::broker::TestBroker;

fn python() -> PathBuf {
    std::env::var_os("KEYBROKER_TEST_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python"),
        PathBuf::from,
    )
}

#[tokio::test]
async fn python_grpcio_client_works_from_reflection_alone() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key(
        "datasets/reflected",
        KeyPurpose::DataKey,
        &BTreeMap::new(),
        None,
    )
    .await
    .unwrap();
    let token = b.token_file().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/reflection_client.py");
    let py = python();
    assert!(
        py.exists(),
        "{} missing: run scripts/install-deps",
        py.display()
    );
    let out = tokio::process::Command::from(Command::new(py))
        .arg(script)
        .arg(format!("localhost:{}", b.addr.port()))
        .arg(b.ca())
        .arg(token)
        .arg("datasets/reflected")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed: {stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = seen["services"].as_array().unwrap();
    for s in [
        "keybroker.v1.DataKeys",
        "keybroker.v1.KeyAdmin",
        "keybroker.v1.Audit",
        "grpc.health.v1.Health",
    ] {
        assert!(services.iter().any(|v| v == s), "{s} not listed: {seen}");
    }
    let methods = seen["methods"].as_array().unwrap();
    // The five key calls and GetAttestationNonce.
    assert_eq!(methods.len(), 6, "{seen}");
    assert_eq!(seen["key_version"], 1);
    assert_eq!(seen["plaintext_len"], 32);
    assert_eq!(seen["round_trip"], true);
    assert_eq!(seen["wrong_context"], "INVALID_ARGUMENT");
    assert_eq!(seen["no_token"], "UNAUTHENTICATED");
    b.stop().await.unwrap();
}
