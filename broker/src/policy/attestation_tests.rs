//! `context.attestation` and `context.recipient_release`: the dev rule for
//! `models/confidential`, the shipped example policy (`broker/policy/attested-models.cedar`),
//! and that attested decisions are never remembered.

use std::collections::BTreeMap;

use super::{Action, AttestationFacts, DEV_POLICY, KeyFacts, PolicyEngine};
use crate::identity::Principal;

const EXAMPLE: &str = include_str!("../../policy/attested-models.cedar");
const GOOD: &str = "04a170f39a3f702472ed0c7ecbda9babfc530e3caac475fdd607ff499177d14c278c5a15ad07ceacd5230ae63d507e9d";

fn dev() -> Principal {
    Principal {
        issuer: "https://dev.keybroker.invalid".into(),
        subject: "system:serviceaccount:dev:trainer".into(),
        namespace: Some("dev".into()),
        ..Principal::default()
    }
}

fn facts<'a>(tee: &'a str, measurement: &'a str, debug: bool) -> AttestationFacts<'a> {
    AttestationFacts {
        tee,
        measurement,
        debug,
        tcb_status: "UpToDate",
        verifier: "dev",
        age_seconds: 3,
        nonce_binding: "evidence",
    }
}

fn key<'a>(name: &'a str, labels: &'a BTreeMap<String, String>) -> KeyFacts<'a> {
    KeyFacts {
        name,
        purpose: "datakey",
        labels,
        hsm_jurisdiction: "EU",
    }
}

/// (allowed, reasons) of `action` on `name` with an optional attestation.
fn decide(
    engine: &PolicyEngine,
    name: &str,
    labels: &BTreeMap<String, String>,
    action: Action,
    attested: Option<(AttestationFacts<'_>, bool)>,
) -> (bool, Vec<String>) {
    let none = BTreeMap::new();
    let d = match attested {
        None => engine.decide(&dev(), action, &key(name, labels), &none),
        Some((a, recipient)) => {
            engine.decide_attested(&dev(), action, &key(name, labels), &none, &a, recipient)
        }
    }
    .unwrap();
    (d.allowed, d.reasons)
}

#[test]
fn dev_policy_releases_models_confidential_only_to_a_non_debug_snp_or_tdx_guest() {
    let engine = PolicyEngine::from_text(DEV_POLICY, "dev").unwrap();
    let none = BTreeMap::new();
    let rule = "dev-models-confidential-needs-fresh-tee".to_owned();
    for action in [Action::GenerateDataKey, Action::Decrypt] {
        let plain = decide(&engine, "models/confidential", &none, action, None);
        assert_eq!(plain, (false, vec![rule.clone()]));
        for tee in ["sev-snp", "tdx"] {
            let ok = decide(
                &engine,
                "models/confidential",
                &none,
                action,
                Some((facts(tee, GOOD, false), false)),
            );
            assert!(ok.0, "{tee}: {ok:?}");
        }
        let debug = decide(
            &engine,
            "models/confidential",
            &none,
            action,
            Some((facts("sev-snp", GOOD, true), false)),
        );
        assert_eq!(debug, (false, vec![rule.clone()]));
        let sgx = decide(
            &engine,
            "models/confidential",
            &none,
            action,
            Some((facts("sgx", GOOD, false), false)),
        );
        assert_eq!(sgx, (false, vec![rule.clone()]));
    }
    // Other keys and actions are untouched.
    assert!(
        decide(
            &engine,
            "datasets/demo",
            &none,
            Action::GenerateDataKey,
            None
        )
        .0
    );
    assert!(
        decide(
            &engine,
            "models/confidential",
            &none,
            Action::GenerateDataKeyWithoutPlaintext,
            None
        )
        .0
    );
}

#[test]
fn example_policy_loads_and_each_rule_bites() {
    let text = format!("{DEV_POLICY}\n{EXAMPLE}");
    let engine = PolicyEngine::from_text(&text, "example").unwrap();
    let none = BTreeMap::new();
    let m = "models/llm";
    let ok = decide(
        &engine,
        m,
        &none,
        Action::GenerateDataKey,
        Some((facts("sev-snp", GOOD, false), false)),
    );
    assert!(ok.0, "{ok:?}");
    let other = "ab".repeat(48);
    let wrong = decide(
        &engine,
        m,
        &none,
        Action::GenerateDataKey,
        Some((facts("sev-snp", &other, false), false)),
    );
    assert_eq!(
        wrong,
        (false, vec!["models-only-in-approved-tee".to_owned()])
    );
    let mut stale_tcb = facts("tdx", GOOD, false);
    stale_tcb.tcb_status = "OutOfDate";
    let tdx = decide(&engine, m, &none, Action::Decrypt, Some((stale_tcb, false)));
    assert_eq!(tdx, (false, vec!["tdx-needs-current-tcb".to_owned()]));
    let mut elsewhere = facts("sev-snp", GOOD, false);
    elsewhere.verifier = "someone-else";
    assert!(
        !decide(
            &engine,
            m,
            &none,
            Action::GenerateDataKey,
            Some((elsewhere, false))
        )
        .0
    );
    assert!(!decide(&engine, m, &none, Action::GenerateDataKey, None).0);

    let sealed_only: BTreeMap<String, String> =
        [("release".to_owned(), "recipient-only".to_owned())].into();
    let clear = decide(
        &engine,
        "datasets/x",
        &sealed_only,
        Action::Decrypt,
        Some((facts("sev-snp", GOOD, false), false)),
    );
    assert_eq!(
        clear,
        (false, vec!["recipient-only-keys-leave-sealed".to_owned()])
    );
    let unattested = decide(&engine, "datasets/x", &sealed_only, Action::Decrypt, None);
    assert!(!unattested.0);
    let sealed = decide(
        &engine,
        "datasets/x",
        &sealed_only,
        Action::Decrypt,
        Some((facts("sev-snp", GOOD, false), true)),
    );
    assert!(sealed.0, "{sealed:?}");
}

#[test]
fn attested_decisions_are_not_remembered_and_a_plain_call_never_reuses_one() {
    let engine = PolicyEngine::from_text(DEV_POLICY, "dev").unwrap();
    let none = BTreeMap::new();
    let a = facts("sev-snp", GOOD, false);
    assert!(
        decide(
            &engine,
            "models/confidential",
            &none,
            Action::GenerateDataKey,
            Some((a, false))
        )
        .0
    );
    assert_eq!(engine.remembered(), 0);
    assert!(
        !decide(
            &engine,
            "models/confidential",
            &none,
            Action::GenerateDataKey,
            None
        )
        .0
    );
}

#[test]
fn a_policy_reading_attestation_without_testing_presence_fails_loading() {
    let unguarded =
        r#"@id("x") permit (principal, action, resource) when { !context.attestation.debug };"#;
    assert!(PolicyEngine::from_text(unguarded, "u.cedar").is_err());
}
