//! Faults: a wrong PIN or a missing module stops start-up with the field named; a token that
//! vanishes at runtime gives UNAVAILABLE and NOT_SERVING, and service resumes by itself.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;

use keybroker_broker::config::BrokerConfig;
use keybroker_client::KeyPurpose;
use softhsm_tests::SoftHsmToken;
use softhsm_tests::broker::{TestBroker, write_config};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn wrong_pin_at_start_names_the_pin_field() {
    let token = SoftHsmToken::new("badpin").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &token, "00000000").unwrap();
    let config = BrokerConfig::load(&cfg).unwrap();
    let err = keybroker_broker::Broker::start(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(".pin"), "{err}");
    assert!(!err.contains("00000000"), "the PIN must not appear: {err}");
    assert!(!err.contains(&token.pin), "the PIN must not appear: {err}");
}

#[tokio::test]
async fn missing_module_at_start_names_the_module_field() {
    let token = SoftHsmToken::new("nomod").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &token, &token.pin).unwrap();
    let inv = dir.path().join("hsm.toml");
    let text = std::fs::read_to_string(&inv).unwrap();
    let text = text.replace(
        &token.module.display().to_string(),
        "/nonexistent/libpkcs11.so",
    );
    std::fs::write(&inv, text).unwrap();
    let config = BrokerConfig::load(&cfg).unwrap();
    let err = keybroker_broker::Broker::start(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(".module"), "{err}");
    assert!(err.contains("/nonexistent/libpkcs11.so"), "{err}");
}

/// `keybrokerd --config` with a wrong PIN exits non-zero and names the field, not the PIN.
#[test]
fn keybrokerd_exits_non_zero_on_a_wrong_pin() {
    let token = SoftHsmToken::new("binpin").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &token, "11112222").unwrap();
    let out = std::process::Command::new(softhsm_tests::workspace_bin("keybrokerd").unwrap())
        .arg("--config")
        .arg(&cfg)
        .arg("--allow-root") // CI runs as root
        .env("SOFTHSM2_CONF", softhsm_tests::process_softhsm_conf())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(".pin"), "{err}");
    assert!(!err.contains("11112222"), "{err}");
}

#[tokio::test]
async fn vanished_token_is_unavailable_and_not_serving_then_recovers() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_key("datasets/drill", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    let before = c
        .generate_data_key("datasets/drill", &none, None)
        .await
        .unwrap();

    let mut health = HealthClient::new(b.channel().await.unwrap());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "keybroker.v1.DataKeys".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next_status = async || -> ServingStatus {
        let msg = watch.message().await.unwrap().unwrap();
        ServingStatus::try_from(msg.status).unwrap()
    };
    assert_eq!(next_status().await, ServingStatus::Serving);

    b.token.unplug().unwrap();
    let err = c
        .generate_data_key("datasets/drill", &none, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(err.is_retryable());
    // The health stream reports the loss (the monitor probes once a second).
    assert_eq!(next_status().await, ServingStatus::NotServing);

    b.token.plug_in().unwrap();
    assert_eq!(next_status().await, ServingStatus::Serving);
    let after = c
        .generate_data_key("datasets/drill", &none, None)
        .await
        .unwrap();
    let opened = c.decrypt(&before.ciphertext, &none, None).await.unwrap();
    assert_eq!(*opened.plaintext, *before.plaintext);
    assert_eq!(after.key_version, 1);
    drop(watch);
    b.stop().await.unwrap();
}
