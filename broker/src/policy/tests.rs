//! Decisions of the shipped default policy, schema validation at load, and property tests for
//! input building.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{Action, DEV_POLICY, KeyFacts, PolicyEngine, PolicyError};
use crate::identity::Principal;
use keybroker_formats::policy::PolicyCheckError;

fn trainer(namespace: &str, region: &str, job: &str) -> Principal {
    Principal {
        issuer: "https://k8s.example.eu".into(),
        subject: format!("system:serviceaccount:{namespace}:trainer"),
        namespace: Some(namespace.into()),
        service_account: Some("trainer".into()),
        job_id: (!job.is_empty()).then(|| job.to_owned()),
        region: Some(region.into()),
        jurisdiction: Some("EU".into()),
        cluster: Some("train-a".into()),
        ..Principal::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn decide(
    p: &Principal,
    action: Action,
    key_labels: &BTreeMap<String, String>,
) -> (bool, Vec<String>) {
    let engine = PolicyEngine::builtin().unwrap();
    let key = KeyFacts {
        name: "datasets/imagenet",
        purpose: "datakey",
        labels: key_labels,
        hsm_jurisdiction: "EU",
    };
    let d = engine.decide(p, action, &key, &BTreeMap::new()).unwrap();
    assert_eq!(d.policy_sha256, engine.sha256());
    (d.allowed, d.reasons)
}

#[test]
fn ml_train_in_eu_region_gets_a_data_key_for_a_confidential_dataset() {
    let confidential = labels(&[("classification", "confidential")]);
    let (ok, why) = decide(
        &trainer("ml-train", "eu-west-1", "job-7"),
        Action::GenerateDataKey,
        &confidential,
    );
    assert!(ok);
    assert_eq!(why, ["ml-train-data-keys"]);
}

#[test]
fn default_policy_denies_the_issue_cases_with_reasons() {
    let confidential = labels(&[("classification", "confidential")]);
    let g = Action::GenerateDataKey;
    // Another namespace and a non-EU region: no permit applies (default deny, no reason).
    assert_eq!(
        decide(&trainer("web", "eu-west-1", "job-7"), g, &confidential),
        (false, vec![])
    );
    assert_eq!(
        decide(&trainer("ml-train", "us-east-1", "job-7"), g, &confidential),
        (false, vec![])
    );
    // A restricted dataset: forbidden, whatever permits.
    let restricted = labels(&[("classification", "restricted")]);
    assert_eq!(
        decide(&trainer("ml-train", "eu-west-1", "job-7"), g, &restricted),
        (false, vec!["restricted-data-never-released".to_owned()])
    );
    // Empty job id.
    assert_eq!(
        decide(&trainer("ml-train", "eu-west-1", ""), g, &confidential),
        (false, vec!["job-id-required".to_owned()])
    );
    // A checkpoint key of job-1 decrypted by job-2; job-1 itself may.
    let checkpoint = labels(&[
        ("classification", "confidential"),
        ("kind", "checkpoint"),
        ("job", "job-1"),
    ]);
    assert_eq!(
        decide(
            &trainer("ml-train", "eu-west-1", "job-2"),
            Action::Decrypt,
            &checkpoint
        ),
        (false, vec!["checkpoint-only-by-its-job".to_owned()])
    );
    assert!(
        decide(
            &trainer("ml-train", "eu-west-1", "job-1"),
            Action::Decrypt,
            &checkpoint
        )
        .0
    );
    // Workloads are not key admins.
    assert!(
        !decide(
            &trainer("ml-train", "eu-west-1", "job-1"),
            Action::CreateKey,
            &confidential
        )
        .0
    );
}

#[test]
fn dev_policy_lets_the_dev_namespace_use_and_administer_keys() {
    let engine = PolicyEngine::from_text(DEV_POLICY, "dev").unwrap();
    let dev = Principal {
        subject: "system:serviceaccount:dev:trainer".into(),
        namespace: Some("dev".into()),
        ..Principal::default()
    };
    let none = BTreeMap::new();
    let key = KeyFacts {
        name: "k",
        purpose: "seal",
        labels: &none,
        hsm_jurisdiction: "EU",
    };
    for a in Action::ALL {
        assert!(
            engine.decide(&dev, a, &key, &none).unwrap().allowed,
            "{a:?}"
        );
    }
}

#[test]
fn a_typo_in_an_attribute_fails_loading_and_names_it() {
    let typo = DEV_POLICY.replace("principal.namespace", "principal.namepsace");
    let e = PolicyEngine::from_text(&typo, "typo.cedar").unwrap_err();
    assert!(
        matches!(e, PolicyError::Check(PolicyCheckError::Invalid { .. })),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("policy typo.cedar:") && msg.contains("namepsace"),
        "{msg}"
    );
    let bad_action = DEV_POLICY.replace("action,", "action == Keybroker::Action::\"Decrpyt\",");
    assert!(PolicyEngine::from_text(&bad_action, "a.cedar").is_err());
    let wrong_type = DEV_POLICY.replace("== \"dev\"", "== 7");
    assert!(PolicyEngine::from_text(&wrong_type, "t.cedar").is_err());
    let no_id = "permit (principal, action, resource);";
    assert!(
        PolicyEngine::from_text(no_id, "n.cedar")
            .unwrap_err()
            .to_string()
            .contains("@id")
    );
    assert!(matches!(
        PolicyEngine::from_text("permit (", "p.cedar"),
        Err(PolicyError::Check(PolicyCheckError::Parse { .. }))
    ));
}

#[test]
fn sha256_is_of_the_policy_text() {
    let a = PolicyEngine::from_text(DEV_POLICY, "a").unwrap();
    let b = PolicyEngine::from_text(&format!("{DEV_POLICY}\n"), "b").unwrap();
    assert_eq!(a.sha256().len(), 64);
    assert_ne!(a.sha256(), b.sha256());
}

proptest! {
    /// Any principal, labels and encryption context a caller can produce builds a valid
    /// request, and the context's job is the principal's verified job, nothing else.
    #[test]
    fn input_building_accepts_any_valid_input(
        ns in proptest::option::of("[a-z0-9-]{0,12}"),
        job in proptest::option::of("[ -~]{0,20}"),
        region in proptest::option::of("[a-z0-9-]{0,12}"),
        key_labels in proptest::collection::btree_map("[a-z_]{1,8}", "[ -~]{0,16}", 0..6),
        ctx in proptest::collection::btree_map("[A-Za-z0-9._:/-]{1,10}", "[ -~]{0,16}", 0..6),
    ) {
        let engine = PolicyEngine::from_text(
            "@id(\"job-echo\") permit (principal, action, resource) when { context.job == principal.job };",
            "echo",
        ).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let p = Principal { subject: "s".into(), namespace: ns, job_id: job, region, ..Principal::default() };
        let key = KeyFacts { name: "k", purpose: "datakey", labels: &key_labels, hsm_jurisdiction: "EU" };
        let d = engine.decide(&p, Action::Decrypt, &key, &ctx).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(d.allowed);
        prop_assert_eq!(d.reasons, vec!["job-echo".to_owned()]);
        prop_assert_eq!(super::input::context_pairs(&ctx).len(), ctx.len());
    }
}

#[test]
fn key_admins_may_run_every_lifecycle_action_also_on_restricted_keys() {
    let admin = trainer("keybroker-admin", "eu-west-1", "");
    let restricted = labels(&[("classification", "restricted")]);
    for a in [
        Action::DisableKey,
        Action::EnableKey,
        Action::UpdateKey,
        Action::RotateKey,
        Action::ScheduleKeyDestruction,
        Action::CancelKeyDestruction,
        Action::RevokeLeases,
    ] {
        assert_eq!(
            decide(&admin, a, &restricted),
            (true, vec!["key-admins".to_owned()]),
            "{a:?}"
        );
        // Workloads get none of them.
        assert!(!decide(&trainer("ml-train", "eu-west-1", "j"), a, &restricted).0);
    }
    // Restricted keys still release nothing, even to admins.
    assert!(!decide(&admin, Action::GenerateDataKey, &restricted).0);
}

#[test]
fn auditors_admins_and_dev_read_the_audit_log_and_workloads_do_not() {
    use super::AuditAction;
    let engine = PolicyEngine::builtin().unwrap();
    let dev_engine = PolicyEngine::from_text(DEV_POLICY, "dev").unwrap();
    let in_ns = |ns: &str| Principal {
        subject: format!("system:serviceaccount:{ns}:x"),
        namespace: Some(ns.into()),
        region: Some("eu-west-1".into()),
        job_id: Some("job-1".into()),
        ..Principal::default()
    };
    for a in [AuditAction::WatchAudit, AuditAction::ReadAuditProofs] {
        for (engine, ns, want) in [
            (&engine, "keybroker-audit", true),
            (&engine, "keybroker-admin", true),
            (&engine, "ml-train", false),
            (&dev_engine, "dev", true),
            (&dev_engine, "ml-train", false),
        ] {
            let d = engine.decide_audit(&in_ns(ns), a).unwrap();
            assert_eq!(d.allowed, want, "{a:?} by {ns}");
            if want {
                assert!(!d.reasons.is_empty(), "an allow names its policy");
            }
        }
    }
}

#[test]
fn remembered_decisions_never_answer_a_different_question() {
    // One engine, so later questions may be served from its memo; a fresh engine per question
    // gives the reference answer.
    let engine = PolicyEngine::builtin().unwrap();
    let confidential = labels(&[("classification", "confidential")]);
    let cases = [
        (
            trainer("ml-train", "eu-west-1", "job-7"),
            Action::GenerateDataKey,
        ),
        (
            trainer("other", "eu-west-1", "job-7"),
            Action::GenerateDataKey,
        ),
        (
            trainer("ml-train", "us-east-1", "job-7"),
            Action::GenerateDataKey,
        ),
        (
            trainer("ml-train", "eu-west-1", "job-7"),
            Action::DisableKey,
        ),
    ];
    for _ in 0..2 {
        for (p, action) in &cases {
            let key = KeyFacts {
                name: "datasets/imagenet",
                purpose: "datakey",
                labels: &confidential,
                hsm_jurisdiction: "EU",
            };
            let got = engine.decide(p, *action, &key, &BTreeMap::new()).unwrap();
            assert_eq!(
                (got.allowed, got.reasons),
                decide(p, *action, &confidential)
            );
        }
    }
    assert_eq!(engine.remembered(), cases.len());
    let answers: Vec<bool> = cases
        .iter()
        .map(|(p, a)| decide(p, *a, &confidential).0)
        .collect();
    assert!(answers.contains(&true) && answers.contains(&false));
}
