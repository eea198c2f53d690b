//! The dev daemon (`keybrokerd dev`, a real process with its text log) and what a caller's
//! identity can do to its log and audit records: a raw newline in an issuer-signed subject
//! stays inside its log line, and every record names the caller's region.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use softhsm_tests::dev::DevBroker;
use softhsm_tests::tokens::mint_with;

#[test]
fn a_newline_in_a_callers_subject_cannot_forge_a_log_line() {
    let state = tempfile::tempdir().unwrap();
    let dev = DevBroker::start(state.path(), &[], &[("KEYBROKER_LOG", "info")]).unwrap();
    // Issuer-signed, namespace `dev` (the dev policy lets it use the demo key), and a subject
    // that tries to start a line of its own.
    let token = mint_with(state.path(), |c| {
        c.insert(
            "sub".into(),
            "spiffe://dev/x\n2026-01-01T00:00:00Z  INFO FORGED-LOG-LINE \r\u{7}".into(),
        );
        c.insert(
            "kubernetes.io".into(),
            serde_json::json!({"namespace": "dev"}),
        );
    })
    .unwrap();
    let token_file = state.path().join("newline-token");
    std::fs::write(&token_file, &token).unwrap();
    let out = dev
        .cli(&[
            "--token-file",
            token_file.to_str().unwrap(),
            "datakey",
            "generate",
            "datasets/demo",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, output) = dev.stop().unwrap();
    let forged: Vec<&String> = output
        .iter()
        .filter(|l| l.trim_start().starts_with("2026-01-01T00:00:00Z") || l.contains('\r'))
        .collect();
    assert!(forged.is_empty(), "a caller split a log line: {forged:#?}");
    assert!(
        output
            .iter()
            .any(|l| l.contains("spiffe://dev/x\\n2026-01-01T00:00:00Z  INFO FORGED")),
        "the subject is logged, escaped: {output:#?}"
    );
}

#[test]
fn dev_mode_records_the_callers_region_in_every_data_key_record() {
    let state = tempfile::tempdir().unwrap();
    let dev = DevBroker::start(state.path(), &[], &[]).unwrap();
    let out = dev.cli(&["datakey", "generate", "datasets/demo"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dev.stop().unwrap();
    let audit = softhsm_tests::broker::read_audit_segments(&state.path().join("audit")).unwrap();
    let with_principal: Vec<serde_json::Value> = audit
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
        .filter(|r| r["op"] == "generate_data_key")
        .collect();
    assert!(!with_principal.is_empty());
    for r in &with_principal {
        assert_eq!(
            r["principal"]["region"],
            keybroker_broker::dev::DEV_REGION,
            "{r:#}"
        );
    }
}
