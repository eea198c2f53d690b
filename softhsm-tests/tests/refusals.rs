//! What a hostile review found the broker let through, driven against a real broker: an
//! ambiguous identity (two `authorization` values), Kubernetes names that are not names, an
//! identity too long for the audit record — each refused or bounded, and in the audit log —
//! and the caller's region in every record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::{BTreeMap, HashMap};

use keybroker_client::KeyPurpose;
use keybroker_proto::v1 as pb;
use keybroker_proto::v1::data_keys_client::DataKeysClient;
use softhsm_tests::broker::TestBroker;
use softhsm_tests::tokens::mint_with;
use tonic::Code;
use tonic::metadata::MetadataValue;

const KEY: &str = "datasets/refusals";

fn records(b: &TestBroker) -> Vec<serde_json::Value> {
    b.audit_records()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

/// GenerateDataKey on [`KEY`] with `authorization: Bearer <t>` for each of `tokens`.
async fn generate(
    b: &TestBroker,
    tokens: &[&str],
    context: HashMap<String, String>,
) -> Result<pb::GenerateDataKeyResponse, tonic::Status> {
    let mut client = DataKeysClient::new(b.channel().await.unwrap());
    let mut req = tonic::Request::new(pb::GenerateDataKeyRequest {
        key: KEY.to_owned(),
        context,
        ..Default::default()
    });
    for t in tokens {
        let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
        req.metadata_mut().append("authorization", v);
    }
    client
        .generate_data_key(req)
        .await
        .map(tonic::Response::into_inner)
}

async fn broker_with_key(
    edit: impl FnOnce(&mut keybroker_broker::config::BrokerConfig),
) -> TestBroker {
    let b = TestBroker::start_with(edit).await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key(KEY, KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    b
}

#[tokio::test]
async fn a_second_authorization_value_is_refused_unauthenticated_and_audited() {
    let b = broker_with_key(|_| {}).await;
    let valid = b.mint_token(std::time::Duration::from_secs(600)).unwrap();
    let other = mint_with(b.dir.path(), |c| {
        c.insert("sub".into(), "spiffe://other.example/ns/ml/sa/x".into());
        c.remove("kubernetes.io");
    })
    .unwrap();
    assert!(generate(&b, &[&valid], HashMap::new()).await.is_ok());
    for (what, second) in [
        ("another principal", other.as_str()),
        ("garbage", "garbage"),
    ] {
        let before = records(&b).len();
        let err = generate(&b, &[&valid, second], HashMap::new())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        let recs = records(&b);
        assert_eq!(recs.len(), before + 1, "{what}: the refusal is recorded");
        let rec = recs.last().unwrap();
        assert_eq!(rec["outcome"]["code"], "unauthenticated", "{what}: {rec:#}");
        assert!(
            rec["principal"].is_null(),
            "{what}: no principal is believed"
        );
        assert_eq!(rec["reasons"][0], "more than one authorization value");
    }
}

#[tokio::test]
async fn kubernetes_names_that_are_not_names_refuse_the_token_and_are_audited() {
    let b = broker_with_key(|_| {}).await;
    for (ns, sa) in [
        ("dev", "trainer\nFORGED-LOG-LINE"),
        ("dev", "Trainer"),
        ("dev\r", "trainer"),
        ("dev", &"a".repeat(2850)),
    ] {
        let token = mint_with(b.dir.path(), |c| {
            c.insert(
                "sub".into(),
                format!("system:serviceaccount:{ns}:{sa}").into(),
            );
            c.insert(
                "kubernetes.io".into(),
                serde_json::json!({"namespace": ns, "serviceaccount": {"name": sa}}),
            );
        })
        .unwrap();
        let before = records(&b).len();
        let err = generate(&b, &[&token], HashMap::new()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{ns:?} {sa:?}: {err:?}");
        let recs = records(&b);
        assert_eq!(recs.len(), before + 1);
        assert_eq!(recs.last().unwrap()["outcome"]["code"], "unauthenticated");
    }
}

#[tokio::test]
async fn a_long_identity_with_the_largest_context_is_recorded_within_the_cap() {
    let b = broker_with_key(|_| {}).await;
    // Issuer-signed, namespace `dev` (allowed by the test policy), a 4,000-character subject,
    // and the largest context the API accepts, in characters that double in JSON.
    let subject = format!("spiffe://example.org/{}", "s".repeat(4000));
    let token = mint_with(b.dir.path(), |c| {
        c.insert("sub".into(), subject.clone().into());
        c.insert(
            "kubernetes.io".into(),
            serde_json::json!({"namespace": "dev"}),
        );
    })
    .unwrap();
    let context: HashMap<String, String> = (0..16)
        .map(|i| (format!("{i:0>256}"), "\"".repeat(256)))
        .collect();
    let dk = generate(&b, &[&token], context).await;
    assert!(dk.is_ok(), "{dk:?}");
    let raw = b.audit_records().unwrap();
    let last = raw.last().unwrap();
    assert!(last.len() <= 16 * 1024, "{} bytes", last.len());
    let rec: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(rec["outcome"]["code"], "ok");
    assert_eq!(rec["encryption_context"].as_object().unwrap().len(), 16);
    let recorded = rec["principal"]["subject"].as_str().unwrap();
    assert!(
        recorded.starts_with("spiffe://example.org/sss") && recorded.contains("\u{2026}sha256:"),
        "{recorded}"
    );
    assert!(recorded.len() <= 128, "{recorded}");
}

#[tokio::test]
async fn the_callers_region_is_in_the_record_from_the_issuer_or_its_region_claim() {
    let b = broker_with_key(|c| {
        let issuer = &mut c.identity.jwt_issuers[0];
        issuer.region = Some("eu-config-1".to_owned());
        issuer.region_claim = Some("region".to_owned());
    })
    .await;
    let plain = b.mint_token(std::time::Duration::from_secs(600)).unwrap();
    generate(&b, &[&plain], HashMap::new()).await.unwrap();
    assert_eq!(
        records(&b).last().unwrap()["principal"]["region"],
        "eu-config-1"
    );
    let claimed = mint_with(b.dir.path(), |c| {
        c.insert("region".into(), "eu-west-4".into());
    })
    .unwrap();
    generate(&b, &[&claimed], HashMap::new()).await.unwrap();
    assert_eq!(
        records(&b).last().unwrap()["principal"]["region"],
        "eu-west-4"
    );
    // A region claim that is not a region name refuses the token.
    let forged = mint_with(b.dir.path(), |c| {
        c.insert("region".into(), "eu\nFORGED".into());
    })
    .unwrap();
    let err = generate(&b, &[&forged], HashMap::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}
