//! Signing decisions: what is signed is visible to policy.
#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::BTreeMap;

use super::*;
use crate::policy::{DEFAULT_POLICY, DEV_POLICY};

const PROVENANCE_ONLY: &str = r#"
@id("training-signs-provenance-for-models")
permit (principal, action == Keybroker::Action::"SignAttestation", resource)
when {
  principal.namespace == "ml-train" &&
  resource.name like "models/*" &&
  context.predicate_type == "https://slsa.dev/provenance/v1"
};

@id("training-signs-model-files")
permit (principal, action == Keybroker::Action::"Sign", resource)
when {
  principal.namespace == "ml-train" && context.artifact_name like "models/*"
};
"#;

fn trainer() -> Principal {
    Principal {
        subject: "system:serviceaccount:ml-train:trainer".into(),
        namespace: Some("ml-train".into()),
        ..Principal::default()
    }
}

fn key<'a>(name: &'a str, labels: &'a BTreeMap<String, String>) -> KeyFacts<'a> {
    KeyFacts {
        name,
        purpose: "sign",
        labels,
        hsm_jurisdiction: "EU",
    }
}

fn attestation(predicate_type: &str) -> SigningFacts {
    SigningFacts {
        digests: vec!["sha256:00".into()],
        subject_names: vec!["model.safetensors".into()],
        subject_digests: vec!["sha256:11".into()],
        predicate_type: predicate_type.into(),
        ..SigningFacts::default()
    }
}

#[test]
fn the_dev_policy_lets_the_dev_namespace_sign() {
    let engine = PolicyEngine::from_text(DEV_POLICY, "dev").unwrap();
    let dev = Principal {
        namespace: Some("dev".into()),
        ..Principal::default()
    };
    let none = BTreeMap::new();
    for a in [SignAction::Sign, SignAction::SignAttestation] {
        let d = engine
            .decide_signing(&dev, a, &key("k", &none), &SigningFacts::default())
            .unwrap();
        assert!(d.allowed, "{a:?}");
    }
}

#[test]
fn the_default_policy_still_validates_and_signs_nothing() {
    let engine = PolicyEngine::builtin().unwrap();
    let none = BTreeMap::new();
    let d = engine
        .decide_signing(
            &trainer(),
            SignAction::Sign,
            &key("models/a", &none),
            &SigningFacts::default(),
        )
        .unwrap();
    assert!(!d.allowed);
    assert!(!DEFAULT_POLICY.is_empty());
}

#[test]
fn an_unknown_predicate_type_is_refused_by_a_policy_that_names_one() {
    let engine = PolicyEngine::from_text(PROVENANCE_ONLY, "provenance").unwrap();
    let none = BTreeMap::new();
    let k = key("models/llm", &none);
    let ok = engine
        .decide_signing(
            &trainer(),
            SignAction::SignAttestation,
            &k,
            &attestation("https://slsa.dev/provenance/v1"),
        )
        .unwrap();
    assert!(ok.allowed);
    assert_eq!(ok.reasons, vec!["training-signs-provenance-for-models"]);
    let other = engine
        .decide_signing(
            &trainer(),
            SignAction::SignAttestation,
            &k,
            &attestation("https://example.com/unknown/v1"),
        )
        .unwrap();
    assert!(!other.allowed);
    let dataset_key = key("datasets/x", &none);
    let elsewhere = engine
        .decide_signing(
            &trainer(),
            SignAction::SignAttestation,
            &dataset_key,
            &attestation("https://slsa.dev/provenance/v1"),
        )
        .unwrap();
    assert!(!elsewhere.allowed);
}

#[test]
fn a_policy_reading_a_misspelt_signing_field_fails_loading() {
    let typo = PROVENANCE_ONLY.replace("context.predicate_type", "context.predicateType");
    assert!(PolicyEngine::from_text(&typo, "typo").is_err());
}
