//! End-to-end: real SoftHSM token, real broker on 127.0.0.1:0, real client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use keybroker_client::{ClientError, KeyPurpose};
use softhsm_tests::broker::TestBroker;
use tonic::Code;

fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Err(e) => e.code().unwrap_or(Code::Unknown),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[tokio::test]
async fn datakey_round_trip_binds_context_and_every_byte() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let labels = BTreeMap::new();
    c.create_key("datasets/imagenet-eu", KeyPurpose::DataKey, &labels, None)
        .await
        .unwrap();
    c.create_key("datasets/other-eu", KeyPurpose::DataKey, &labels, None)
        .await
        .unwrap();
    let context = ctx(&[("dataset", "imagenet"), ("snapshot", "2026-11")]);
    let dk = c
        .generate_data_key("datasets/imagenet-eu", &context, None)
        .await
        .unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(dk.key_version, 1);
    assert!(!dk.lease_id.is_empty());
    assert!(dk.expires_at.is_some());

    let opened = c.decrypt(&dk.ciphertext, &context, None).await.unwrap();
    assert_eq!(*opened.plaintext, *dk.plaintext);
    assert_eq!(opened.key, "datasets/imagenet-eu");

    // A changed context is refused.
    let changed = ctx(&[("dataset", "imagenet"), ("snapshot", "2026-12")]);
    assert_eq!(
        code(c.decrypt(&dk.ciphertext, &changed, None).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.decrypt(&dk.ciphertext, &BTreeMap::new(), None).await),
        Code::InvalidArgument
    );

    // A changed byte anywhere is refused (as bad input, an unknown key, or a missing version).
    for i in 0..dk.ciphertext.len() {
        let mut bad = dk.ciphertext.clone();
        bad[i] ^= 0x01;
        let got = code(c.decrypt(&bad, &context, None).await);
        assert!(
            matches!(
                got,
                Code::InvalidArgument | Code::PermissionDenied | Code::FailedPrecondition
            ),
            "byte {i}: {got:?}"
        );
    }

    // Another key's ciphertext, relabelled as this key's, does not open.
    let other = c
        .generate_data_key("datasets/other-eu", &context, None)
        .await
        .unwrap();
    let relabelled: Vec<u8> = {
        let s = other.ciphertext.clone();
        let from = b"datasets/other-eu";
        let to = b"datasets/imagenet-eu";
        let pos = s.windows(from.len()).position(|w| w == from).unwrap();
        let mut v = s[..pos - 1].to_vec();
        v.push(u8::try_from(to.len()).unwrap());
        v.extend_from_slice(to);
        v.extend_from_slice(&s[pos + from.len()..]);
        v
    };
    assert_eq!(
        code(c.decrypt(&relabelled, &context, None).await),
        Code::InvalidArgument
    );
    b.stop().await.unwrap();
}

#[tokio::test]
async fn rotation_moves_new_keys_to_v2_and_old_ciphertexts_still_open() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key(
        "models/llm-7b/checkpoints",
        KeyPurpose::DataKey,
        &BTreeMap::new(),
        None,
    )
    .await
    .unwrap();
    let context = ctx(&[("run", "r1")]);
    let v1 = c
        .generate_data_key("models/llm-7b/checkpoints", &context, None)
        .await
        .unwrap();
    assert_eq!(v1.key_version, 1);
    let key = c.rotate_key("models/llm-7b/checkpoints").await.unwrap();
    assert_eq!(key.primary_version, 2);
    assert_eq!(key.versions.len(), 2);
    let v2 = c
        .generate_data_key("models/llm-7b/checkpoints", &context, None)
        .await
        .unwrap();
    assert_eq!(v2.key_version, 2);
    let old = c.decrypt(&v1.ciphertext, &context, None).await.unwrap();
    assert_eq!(old.key_version, 1);
    assert_eq!(*old.plaintext, *v1.plaintext);

    // ReEncrypt moves the v1 ciphertext to v2; its response has no plaintext field at all.
    let re = c.re_encrypt(&v1.ciphertext, &context).await.unwrap();
    assert_eq!((re.source_key_version, re.key_version), (1, 2));
    assert_ne!(re.ciphertext, v1.ciphertext);
    let reopened = c.decrypt(&re.ciphertext, &context, None).await.unwrap();
    assert_eq!(reopened.key_version, 2);
    assert_eq!(*reopened.plaintext, *v1.plaintext);
    b.stop().await.unwrap();
}

#[tokio::test]
async fn seal_keys_encrypt_small_payloads_and_refuse_wrong_use() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key(
        "seal/openbao-prod",
        KeyPurpose::Seal,
        &BTreeMap::new(),
        None,
    )
    .await
    .unwrap();
    c.create_key("datasets/dk", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    let none = BTreeMap::new();
    let sealed = c
        .encrypt("seal/openbao-prod", b"root key share", &none)
        .await
        .unwrap();
    let opened = c.decrypt(&sealed.ciphertext, &none, None).await.unwrap();
    assert_eq!(opened.plaintext.as_slice(), b"root key share");
    // Purposes do not mix.
    assert_eq!(
        code(c.generate_data_key("seal/openbao-prod", &none, None).await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code(c.encrypt("datasets/dk", b"x", &none).await),
        Code::FailedPrecondition
    );
    // Payload limits.
    assert_eq!(
        code(c.encrypt("seal/openbao-prod", b"", &none).await),
        Code::InvalidArgument
    );
    let big = vec![7u8; 64 * 1024 + 1];
    assert_eq!(
        code(c.encrypt("seal/openbao-prod", &big, &none).await),
        Code::InvalidArgument
    );
    let max = vec![7u8; 64 * 1024];
    let sealed = c.encrypt("seal/openbao-prod", &max, &none).await.unwrap();
    assert_eq!(
        c.decrypt(&sealed.ciphertext, &none, None)
            .await
            .unwrap()
            .plaintext
            .len(),
        max.len()
    );
    b.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_invalid_argument_and_unknown_keys_look_forbidden() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    for name in [
        "",
        "UPPER",
        "-lead",
        "a//b",
        "a/../b",
        "trailing/",
        "sp ace",
        &"a".repeat(129),
    ] {
        assert_eq!(
            code(c.create_key(name, KeyPurpose::DataKey, &none, None).await),
            Code::InvalidArgument,
            "{name:?}"
        );
    }
    c.create_key("datasets/x", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    assert_eq!(
        code(
            c.create_key("datasets/x", KeyPurpose::DataKey, &none, None)
                .await
        ),
        Code::AlreadyExists
    );
    let too_many: BTreeMap<_, _> = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    assert_eq!(
        code(c.generate_data_key("datasets/x", &too_many, None).await),
        Code::InvalidArgument
    );
    let long_value = ctx(&[("k", &"v".repeat(257))]);
    assert_eq!(
        code(c.generate_data_key("datasets/x", &long_value, None).await),
        Code::InvalidArgument
    );
    let long_key = BTreeMap::from([("k".repeat(257), "v".to_owned())]);
    assert_eq!(
        code(c.generate_data_key("datasets/x", &long_key, None).await),
        Code::InvalidArgument
    );
    for garbage in [
        vec![],
        vec![0u8],
        b"KB".to_vec(),
        vec![0xff; 64],
        vec![0x4b; 300_000],
    ] {
        let got = code(c.decrypt(&garbage, &none, None).await);
        assert!(
            matches!(
                got,
                Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted
            ),
            "{got:?}"
        );
    }
    let dk = c
        .generate_data_key("datasets/x", &none, None)
        .await
        .unwrap();
    for cut in [1, 10, dk.ciphertext.len() / 2, dk.ciphertext.len() - 1] {
        assert_eq!(
            code(c.decrypt(&dk.ciphertext[..cut], &none, None).await),
            Code::InvalidArgument,
            "cut {cut}"
        );
    }
    // Unknown keys answer exactly like forbidden ones.
    assert_eq!(
        code(c.generate_data_key("datasets/nope", &none, None).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(c.get_key("datasets/nope").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(c.rotate_key("datasets/nope").await),
        Code::PermissionDenied
    );
    b.stop().await.unwrap();
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    use keybroker_proto::v1::GenerateDataKeyRequest;
    use keybroker_proto::v1::data_keys_client::DataKeysClient;
    let b = TestBroker::start().await.unwrap();
    let mut raw = DataKeysClient::new(b.channel().await.unwrap());
    let req = || GenerateDataKeyRequest {
        key: "datasets/demo".into(),
        ..Default::default()
    };
    let err = raw.generate_data_key(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.metadata().get("x-request-id").is_some(),
        "errors carry the request id"
    );

    let token = b.mint_token(Duration::from_secs(60)).unwrap();
    let mut forged = token.clone().into_bytes();
    let i = forged.len() - 3;
    forged[i] = if forged[i] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).unwrap();
    for bad in [forged.as_str(), "not-a-jwt", "a.b.c"] {
        let mut r = tonic::Request::new(req());
        r.metadata_mut()
            .insert("authorization", format!("Bearer {bad}").parse().unwrap());
        assert_eq!(
            raw.generate_data_key(r).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    // The valid token passes authentication (and then meets an unknown key).
    let mut r = tonic::Request::new(req());
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(
        raw.generate_data_key(r).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    b.stop().await.unwrap();
}
