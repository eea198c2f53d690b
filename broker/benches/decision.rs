//! Decision latency per request: JWT verification (Ed25519, strict parse, claim rules) plus a
//! Cedar decision under the shipped default policy, each alone and together.
//!
//! Run: `cargo bench -p keybroker-broker --bench decision`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keybroker_broker::identity::{IssuerSettings, JwtVerifier};
use keybroker_broker::policy::{Action, KeyFacts, PolicyEngine};
use serde_json::json;

const ISS: &str = "https://k8s.example.eu";

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "alg": "EdDSA",
        "x": URL_SAFE_NO_PAD.encode(kp.public_key_raw())}]});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let verifier = JwtVerifier::new(vec![IssuerSettings {
        issuer: ISS.into(),
        audiences: vec!["keybroker".into()],
        jwks: keybroker_broker::config::JwksSource::File(dir.path().join("jwks.json")),
        algorithms: vec![Algorithm::EdDSA],
        max_token_lifetime: Duration::from_secs(3600),
        leeway: Duration::from_secs(30),
        job_claim: Some("job".into()),
        region_claim: None,
        cluster: Some("train-a".into()),
        region: Some("eu-west-1".into()),
        jurisdiction: Some("EU".into()),
    }])
    .unwrap();
    let now = 1_700_000_000u64;
    let claims = json!({"iss": ISS, "sub": "system:serviceaccount:ml-train:trainer",
        "aud": "keybroker", "iat": now, "nbf": now, "exp": now + 600, "job": "job-7",
        "kubernetes.io": {"namespace": "ml-train", "serviceaccount": {"name": "trainer"}}});
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    let key = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap();
    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    let policy = PolicyEngine::builtin().unwrap();
    let labels: BTreeMap<String, String> =
        [("classification".to_owned(), "confidential".to_owned())].into();
    let facts = KeyFacts {
        name: "datasets/imagenet",
        purpose: "datakey",
        labels: &labels,
        hsm_jurisdiction: "EU",
    };
    let ctx: BTreeMap<String, String> = [("dataset".to_owned(), "imagenet".to_owned())].into();
    let principal = verifier.verify(&token, now).unwrap();
    assert!(
        policy
            .decide(&principal, Action::GenerateDataKey, &facts, &ctx)
            .unwrap()
            .allowed
    );

    c.bench_function("identity (EdDSA JWT verify + claims)", |b| {
        b.iter(|| verifier.verify(black_box(&token), now).unwrap());
    });
    c.bench_function("policy (Cedar decide, default policy)", |b| {
        b.iter(|| {
            policy
                .decide(black_box(&principal), Action::GenerateDataKey, &facts, &ctx)
                .unwrap()
        });
    });
    c.bench_function("identity + policy", |b| {
        b.iter(|| {
            let p = verifier.verify(black_box(&token), now).unwrap();
            policy
                .decide(&p, Action::GenerateDataKey, &facts, &ctx)
                .unwrap()
        });
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
