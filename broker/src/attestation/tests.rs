//! The checks of [`Attestation::check`]: every JWS-level hostile case of workload JWTs (the same
//! table, `identity::hostile_tests::jws_cases`), then freshness, binding and verifier choice.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Attestation, Facts};
use crate::config::{
    AttestationConfig, AttestationProfile, AttestationVerifierConfig, JwksSource, JwtAlgorithm,
};
use crate::identity::Principal;
use crate::identity::hostile_tests::{Keys, jws_cases, keys, raw};

const ISS: &str = "https://verifier.test";
const MEASUREMENT: &str = "5c3f000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000a1";

fn verifier(k: &Keys, issuer: Option<&str>, evidence_only: bool) -> Attestation {
    Attestation::new(&AttestationConfig {
        max_age: Duration::from_secs(300),
        nonce_ttl: Duration::from_secs(300),
        max_outstanding_nonces: 100,
        verifiers: vec![AttestationVerifierConfig {
            name: "test".into(),
            profile: AttestationProfile::EarTrustee,
            issuer: issuer.map(str::to_owned),
            jwks: JwksSource::File(k.dir.path().join("a.json")),
            algorithms: vec![
                JwtAlgorithm::Rs256,
                JwtAlgorithm::Ps256,
                JwtAlgorithm::Es256,
                JwtAlgorithm::EdDsa,
            ],
            require_evidence_nonce: evidence_only,
            max_token_bytes: 32 * 1024,
            leeway: Duration::from_secs(30),
        }],
    })
    .unwrap()
}

fn who(subject: &str) -> Principal {
    Principal {
        issuer: "https://issuer.test".into(),
        subject: subject.into(),
        ..Principal::default()
    }
}

/// An EAR result (draft -03 names, Trustee layout) carrying `nonce` in its runtime data.
fn result(iat: u64, nonce: &str) -> Value {
    json!({"iss": ISS, "eat_profile": "tag:ietf.org,2026:rats/ear#03", "iat": iat, "exp": iat + 300,
      "ear_status": "affirming",
      "submods": {"cpu0": {"ear_status": "affirming",
        "ear_attester_claims": {"tee": "snp",
            "claims": {"measurement": MEASUREMENT, "policy_debug_allowed": false}},
        "ear_verifier_claims": {"runtime_data": {"nonce": nonce,
            "tee-pubkey": {"kty": "OKP", "crv": "X25519",
                           "x": "hSDwCYkwp1R0i33ctD73Wg2_Og0mOBr066SpjqqbTmo"}}}}}})
}

fn sign(k: &Keys, payload: &Value) -> String {
    raw(
        r#"{"alg":"EdDSA","kid":"ed1","typ":"JWT"}"#,
        &payload.to_string(),
        &k.ed,
        jsonwebtoken::Algorithm::EdDSA,
    )
}

const NOW: u64 = 1_800_000_000;

#[tokio::test]
async fn every_jws_hostile_case_is_refused_for_the_same_reason_as_for_workload_jwts() {
    let k = keys();
    let a = verifier(&k, Some(ISS), true);
    let (nonce, _) = a.nonce(&who("a"), NOW).unwrap();
    let cases = jws_cases(&k, &result(NOW, &nonce).to_string());
    assert!(cases.len() >= 25, "only {} cases", cases.len());
    for (name, token, want) in &cases {
        let got = a.check(token, &who("a"), NOW).await;
        assert_eq!(
            got.map_err(|r| r.reason),
            Err(want.to_string()),
            "case: {name}"
        );
    }
    // None of them used the nonce up.
    let good = sign(&k, &result(NOW, &nonce));
    assert!(a.check(&good, &who("a"), NOW).await.is_ok());
}

#[tokio::test]
async fn a_valid_result_maps_once_and_every_freshness_rule_bites() {
    let k = keys();
    let a = verifier(&k, Some(ISS), true);
    let fresh = |subject: &str, at: u64| a.nonce(&who(subject), at).unwrap().0;
    let n = fresh("a", NOW);
    let token = sign(&k, &result(NOW + 2, &n));
    let facts: Facts = a.check(&token, &who("a"), NOW + 5).await.unwrap();
    assert_eq!(
        (facts.verifier.as_str(), facts.profile, facts.tee),
        ("test", "ear", "sev-snp")
    );
    assert_eq!(facts.measurement, MEASUREMENT);
    assert!(!facts.debug);
    assert_eq!((facts.age_seconds, facts.nonce_binding), (3, "evidence"));
    assert!(matches!(
        facts.recipient,
        Some(super::profiles::BoundKey::X25519(_))
    ));
    let reason = |r: Result<Facts, super::Refusal>| r.map(|_| ()).map_err(|r| r.reason);
    assert_eq!(
        reason(a.check(&token, &who("a"), NOW + 6).await),
        Err("nonce replayed".into())
    );

    let cases: Vec<(&str, String, Principal, u64, &str)> = vec![
        (
            "another workload's nonce",
            sign(&k, &result(NOW, &fresh("a", NOW))),
            who("b"),
            NOW,
            "nonce not issued to this caller",
        ),
        (
            "not our nonce",
            sign(&k, &result(NOW, &"A".repeat(55))),
            who("a"),
            NOW,
            "nonce not issued to this caller",
        ),
        (
            "nonce expired",
            sign(&k, &result(NOW + 301, &fresh("a", NOW))),
            who("a"),
            NOW + 301,
            "nonce expired",
        ),
        (
            "older than max_age",
            sign(&k, &result(NOW - 301, &fresh("a", NOW - 10))),
            who("a"),
            NOW,
            "result too old",
        ),
        (
            "issued in the future",
            sign(&k, &result(NOW + 31, &fresh("a", NOW))),
            who("a"),
            NOW,
            "issued in the future",
        ),
        (
            "issued before the nonce",
            sign(&k, &result(NOW - 60, &fresh("a", NOW))),
            who("a"),
            NOW,
            "result predates nonce",
        ),
        (
            "exp passed",
            sign(&k, &{
                let mut r = result(NOW, &fresh("a", NOW));
                r["exp"] = json!(NOW + 10);
                r
            }),
            who("a"),
            NOW + 41,
            "result expired",
        ),
        (
            "no nonce",
            sign(&k, &{
                let mut r = result(NOW, "x");
                r["submods"]["cpu0"]["ear_verifier_claims"]["runtime_data"]
                    .as_object_mut()
                    .unwrap()
                    .remove("nonce");
                r
            }),
            who("a"),
            NOW,
            "nonce missing",
        ),
        (
            "nonce only echoed by the verifier",
            sign(&k, &{
                let n = fresh("a", NOW);
                let mut r = result(NOW, &n);
                r["submods"]["cpu0"]["ear_verifier_claims"]["runtime_data"]
                    .as_object_mut()
                    .unwrap()
                    .remove("nonce");
                r["eat_nonce"] = json!(n);
                r
            }),
            who("a"),
            NOW,
            "nonce not bound to evidence",
        ),
        (
            "no tee",
            sign(&k, &{
                let mut r = result(NOW, &fresh("a", NOW));
                r["submods"]["cpu0"]["ear_attester_claims"]
                    .as_object_mut()
                    .unwrap()
                    .remove("tee");
                r
            }),
            who("a"),
            NOW,
            "missing tee",
        ),
        (
            "unknown verifier",
            sign(&k, &{
                let mut r = result(NOW, &fresh("a", NOW));
                r["iss"] = json!("https://elsewhere.test");
                r
            }),
            who("a"),
            NOW,
            "unknown issuer",
        ),
    ];
    for (name, token, caller, at, want) in cases {
        assert_eq!(
            reason(a.check(&token, &caller, at).await),
            Err(want.to_owned()),
            "case: {name}"
        );
    }
}

#[tokio::test]
async fn result_bound_nonces_pass_when_allowed_and_iss_less_results_find_their_verifier() {
    let k = keys();
    let a = verifier(&k, None, false);
    let n = a.nonce(&who("a"), NOW).unwrap().0;
    let mut r = result(NOW, "x");
    r.as_object_mut().unwrap().remove("iss");
    r["submods"]["cpu0"]["ear_verifier_claims"]["runtime_data"]
        .as_object_mut()
        .unwrap()
        .remove("nonce");
    r["eat_nonce"] = json!(n);
    let facts = a.check(&sign(&k, &r), &who("a"), NOW).await.unwrap();
    assert_eq!(facts.nonce_binding, "result");
}
