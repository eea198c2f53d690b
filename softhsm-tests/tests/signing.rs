//! End-to-end signing (issue 19): SIGN keys on a real SoftHSM token behind a real broker.
//! Every signature is an audit record written before the signature is returned; its inclusion
//! proof under a signed checkpoint verifies offline; refusals are recorded too.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use keybroker_broker::keys::envelope::Envelope;
use keybroker_broker::keys::name::KeyName;
use keybroker_client::signing::bundle::{BUNDLE_MEDIA_TYPE, Bundle, verify_statement_receipt};
use keybroker_client::signing::format::{Algorithm, Envelope as Dsse, PublicKey};
use keybroker_client::{Client, ClientError, KeyPurpose};
use keybroker_proto::v1 as pb;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use softhsm_tests::broker::TestBroker;
use tonic::Code;

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Err(e) => e.code().unwrap_or(Code::Unknown),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

fn record(b: &TestBroker, index: u64) -> Value {
    let records = b.audit_records().unwrap();
    serde_json::from_str(&records[usize::try_from(index).unwrap()]).unwrap()
}

fn last_record(b: &TestBroker) -> Value {
    serde_json::from_str(b.audit_records().unwrap().last().unwrap()).unwrap()
}

fn statement(subject_digest: &str, predicate_type: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "datasets/imagenet-eu/snapshot-2026-12", "digest": {"sha256": subject_digest}}],
        "predicateType": predicate_type,
        "predicate": {"builder": {"id": "https://example.invalid/trainer"}},
    }))
    .unwrap()
}

async fn sign_bundle(c: &Client, key: &str, artifact: &[u8]) -> ([u8; 32], Bundle) {
    let digest: [u8; 32] = Sha256::digest(artifact).into();
    let signed = c
        .sign_digest(
            key,
            &digest,
            "models/llm-7b/final.safetensors",
            "application/octet-stream",
        )
        .await
        .unwrap();
    let public = c.public_key(key, signed.key_version).await.unwrap();
    let receipt = c
        .receipt(signed.audit_index, Duration::from_secs(20))
        .await
        .unwrap();
    let bundle = Bundle {
        media_type: BUNDLE_MEDIA_TYPE.to_owned(),
        key: signed.key,
        key_version: signed.key_version,
        algorithm: signed.algorithm.as_str().to_owned(),
        public_key: public.pem,
        signature: base64::engine::general_purpose::STANDARD.encode(&signed.signature),
        digest: format!("sha256:{}", hex::encode(digest)),
        receipt,
    };
    (digest, bundle)
}

#[tokio::test]
async fn a_signature_is_logged_with_digest_version_and_principal_and_its_receipt_verifies_offline()
{
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_signing_key("models/release", Algorithm::EcdsaP256, &none, None)
        .await
        .unwrap();
    let info = c.get_key("models/release").await.unwrap();
    assert_eq!(info.purpose, KeyPurpose::Sign);

    let (digest, bundle) = sign_bundle(&c, "models/release", b"model weights").await;
    assert_eq!(bundle.key_version, 1);
    let logged = bundle.verify(&digest, None, None).unwrap();
    assert_eq!(
        logged,
        record(&b, bundle.receipt.index),
        "the receipt is the log's record"
    );
    assert_eq!(logged["op"], "sign");
    assert_eq!(logged["decision"], "allow");
    assert_eq!(
        logged["signed"]["digest"],
        format!("sha256:{}", hex::encode(digest))
    );
    assert_eq!(
        logged["signed"]["artifact_name"],
        "models/llm-7b/final.safetensors"
    );
    assert_eq!(logged["signed"]["algorithm"], "ecdsa-p256");
    assert_eq!(logged["key_version"], 1);
    assert!(
        logged["principal"]["subject"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{logged}"
    );

    // Another artifact, another key, a changed record or a cut proof: refused.
    let other: [u8; 32] = Sha256::digest(b"model weights!").into();
    assert!(bundle.verify(&other, None, None).is_err());
    c.create_signing_key("models/other", Algorithm::EcdsaP256, &none, None)
        .await
        .unwrap();
    let other_key =
        PublicKey::from_pem(&c.public_key("models/other", 0).await.unwrap().pem).unwrap();
    assert!(bundle.verify(&digest, Some(&other_key), None).is_err());
    let mut changed = bundle.clone();
    changed.receipt.record = changed
        .receipt
        .record
        .replace("\"key_version\":1", "\"key_version\":2");
    assert!(changed.verify(&digest, None, None).is_err());
    let mut cut = bundle.clone();
    cut.receipt.inclusion_proof.pop();
    if bundle.receipt.tree_size > 1 {
        assert!(cut.verify(&digest, None, None).is_err());
    }
    let mut moved = bundle.clone();
    moved.receipt.index += 1;
    assert!(moved.verify(&digest, None, None).is_err());
}

#[tokio::test]
async fn disabled_signing_key_refuses_the_next_sign_and_the_refusal_is_recorded() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    c.create_signing_key(
        "models/disable-me",
        Algorithm::EcdsaP256,
        &BTreeMap::new(),
        None,
    )
    .await
    .unwrap();
    let digest: [u8; 32] = Sha256::digest(b"checkpoint").into();
    c.sign_digest("models/disable-me", &digest, "ckpt-1", "")
        .await
        .unwrap();
    c.disable_key("models/disable-me", 0).await.unwrap();
    assert_eq!(
        code(
            c.sign_digest("models/disable-me", &digest, "ckpt-2", "")
                .await
        ),
        Code::FailedPrecondition
    );
    let refused = last_record(&b);
    assert_eq!(refused["op"], "sign");
    assert_eq!(refused["decision"], "deny");
    assert_eq!(refused["outcome"]["code"], "failed_precondition");
    assert_eq!(refused["signed"]["artifact_name"], "ckpt-2");
    // The public key still answers: verifiers need it after a revocation.
    assert!(c.public_key("models/disable-me", 1).await.is_ok());
}

#[tokio::test]
async fn sign_keys_refuse_data_keys_and_data_keys_refuse_sign() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_signing_key("sign/only", Algorithm::Ed25519, &none, None)
        .await
        .unwrap();
    c.create_key("data/only", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    c.create_key("seal/only", KeyPurpose::Seal, &none, None)
        .await
        .unwrap();
    assert_eq!(
        code(c.generate_data_key("sign/only", &none, None).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(c.encrypt("sign/only", b"secret", &none).await),
        Code::FailedPrecondition
    );
    let digest = [7u8; 32];
    for key in ["data/only", "seal/only"] {
        assert_eq!(
            code(c.sign_digest(key, &digest, "a", "").await),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(
                c.sign_dsse(
                    key,
                    &statement(&"ab".repeat(32), "https://slsa.dev/provenance/v1")
                )
                .await
            ),
            Code::FailedPrecondition
        );
        assert_eq!(code(c.public_key(key, 0).await), Code::FailedPrecondition);
    }
    // A ciphertext naming the SIGN key opens nothing.
    let dk = c.generate_data_key("data/only", &none, None).await.unwrap();
    let mut env = Envelope::parse(&dk.ciphertext).unwrap();
    env.key = KeyName::parse("sign/only").unwrap();
    assert_eq!(
        code(c.decrypt(&env.encode(), &none, None).await),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn hostile_sign_requests_are_refused_as_invalid_and_recorded() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    c.create_signing_key(
        "models/hostile",
        Algorithm::EcdsaP256,
        &BTreeMap::new(),
        None,
    )
    .await
    .unwrap();
    let base = pb::SignRequest {
        key: "models/hostile".into(),
        digest_algorithm: pb::DigestAlgorithm::Sha256 as i32,
        artifact_name: "a".into(),
        ..pb::SignRequest::default()
    };
    let cases = [
        pb::SignRequest {
            digest_hex: format!("{}zz", "ab".repeat(31)),
            ..base.clone()
        },
        pb::SignRequest {
            digest_hex: "ab".repeat(31),
            ..base.clone()
        },
        pb::SignRequest {
            digest: vec![1; 48],
            ..base.clone()
        },
        pb::SignRequest {
            digest: vec![1; 32],
            digest_hex: "ab".repeat(32),
            ..base.clone()
        },
        pb::SignRequest {
            digest_algorithm: 0,
            digest: vec![1; 32],
            ..base.clone()
        },
        pb::SignRequest {
            digest: vec![1; 32],
            artifact_name: String::new(),
            ..base.clone()
        },
        pb::SignRequest {
            digest: vec![1; 32],
            subjects: vec![pb::Subject {
                name: "s".into(),
                digest: [("sha256".to_owned(), "XYZ".to_owned())].into(),
            }],
            ..base.clone()
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        assert_eq!(
            code(c.sign_request(case).await),
            Code::InvalidArgument,
            "case {i}"
        );
        let r = last_record(&b);
        assert_eq!(r["op"], "sign", "case {i}");
        assert_eq!(r["key_name"], "models/hostile", "case {i}");
        assert_eq!(r["outcome"]["code"], "invalid_argument", "case {i}");
    }
    // An oversized statement, and ones that are not in-toto Statement v1.
    let big = serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "x", "digest": {"sha256": "ab".repeat(32)}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {"pad": "a".repeat(70 * 1024)},
    }))
    .unwrap();
    let not_v1 = statement(&"ab".repeat(32), "https://slsa.dev/provenance/v1");
    let not_v1 = String::from_utf8(not_v1)
        .unwrap()
        .replace("Statement/v1", "Statement/v0.1");
    let no_hex = statement("not-hex", "https://slsa.dev/provenance/v1");
    for bad in [big, not_v1.into_bytes(), no_hex, b"{}".to_vec()] {
        assert_eq!(
            code(c.sign_dsse("models/hostile", &bad).await),
            Code::InvalidArgument
        );
        assert_eq!(last_record(&b)["op"], "sign_dsse");
    }
}

#[tokio::test]
async fn dsse_envelopes_verify_for_both_algorithms_and_rotation_keeps_old_versions_verifiable() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    for (key, alg) in [
        ("attest/ecdsa", Algorithm::EcdsaP256),
        ("attest/ed25519", Algorithm::Ed25519),
    ] {
        c.create_signing_key(key, alg, &none, None).await.unwrap();
        let body = statement(
            &hex::encode(Sha256::digest(b"snapshot")),
            "https://slsa.dev/provenance/v1",
        );
        let signed = c.sign_dsse(key, &body).await.unwrap();
        assert_eq!(signed.algorithm, alg);
        let envelope: Dsse = serde_json::from_slice(&signed.envelope).unwrap();
        assert_eq!(envelope.payload_type, "application/vnd.in-toto+json");
        assert_eq!(envelope.signatures[0].keyid, signed.keyid);
        let public = c.public_key(key, signed.key_version).await.unwrap();
        assert_eq!(public.keyid, signed.keyid);
        let pk = PublicKey::from_pem(&public.pem).unwrap();
        assert_eq!(envelope.verify(&pk).unwrap(), body);
        let receipt = c
            .receipt(signed.audit_index, Duration::from_secs(20))
            .await
            .unwrap();
        let logged =
            verify_statement_receipt(&receipt, &body, (key, signed.key_version), None).unwrap();
        assert_eq!(
            logged["signed"]["predicate_type"],
            "https://slsa.dev/provenance/v1"
        );
        assert_eq!(
            logged["signed"]["subjects"][0]["name"],
            "datasets/imagenet-eu/snapshot-2026-12"
        );
        // A changed payload does not verify.
        let mut tampered = envelope.clone();
        tampered.payload = base64::engine::general_purpose::STANDARD.encode(b"{}");
        assert!(tampered.verify(&pk).is_err());

        // Rotation: version 2 signs, version 1's key still verifies version 1's signatures.
        c.rotate_key(key).await.unwrap();
        let again = c.sign_dsse(key, &body).await.unwrap();
        assert_eq!(again.key_version, 2);
        assert_ne!(again.keyid, signed.keyid);
        let env2: Dsse = serde_json::from_slice(&again.envelope).unwrap();
        assert!(
            env2.verify(&pk).is_err(),
            "version 1's key refuses version 2's signature"
        );
        assert!(envelope.verify(&pk).is_ok());
    }
}
