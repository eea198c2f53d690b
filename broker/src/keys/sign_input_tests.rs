//! Hostile input of the Signing service: every malformed digest or statement is refused.
#![allow(clippy::unwrap_used, reason = "test code")]

use super::*;

const SHA256_HEX: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn statement_text(subjects: &str, extra: &str) -> String {
    format!(
        r#"{{"_type":"https://in-toto.io/Statement/v1","subject":{subjects},"predicateType":"https://slsa.dev/provenance/v1","predicate":{{"buildType":"x"}}{extra}}}"#
    )
}

fn one_subject() -> String {
    format!(r#"[{{"name":"model.bin","digest":{{"sha256":"{SHA256_HEX}"}}}}]"#)
}

#[test]
fn a_hex_digest_of_the_right_length_is_accepted_in_either_case() {
    let d = Digest::parse(DigestAlgorithm::Sha256, vec![], &SHA256_HEX.to_uppercase()).unwrap();
    assert_eq!(d.label(), format!("sha256:{SHA256_HEX}"));
    let raw = Digest::parse(DigestAlgorithm::Sha384, vec![1; 48], "").unwrap();
    assert_eq!(raw.bytes.len(), 48);
}

#[test]
fn non_hex_digests_are_refused() {
    let bad = format!("{}zz", &SHA256_HEX[..62]);
    assert!(Digest::parse(DigestAlgorithm::Sha256, vec![], &bad).is_err());
    let spaced = format!(" {}", &SHA256_HEX[1..]);
    assert!(Digest::parse(DigestAlgorithm::Sha256, vec![], &spaced).is_err());
    let signed = format!("+{}", &SHA256_HEX[1..]);
    assert!(Digest::parse(DigestAlgorithm::Sha256, vec![], &signed).is_err());
}

#[test]
fn digests_of_the_wrong_length_are_refused() {
    assert!(Digest::parse(DigestAlgorithm::Sha256, vec![], &SHA256_HEX[..62]).is_err());
    assert!(Digest::parse(DigestAlgorithm::Sha384, vec![], SHA256_HEX).is_err());
    assert!(Digest::parse(DigestAlgorithm::Sha256, vec![0; 31], "").is_err());
    assert!(Digest::parse(DigestAlgorithm::Sha256, vec![0; 48], "").is_err());
}

#[test]
fn both_or_neither_digest_forms_are_refused() {
    assert!(Digest::parse(DigestAlgorithm::Sha256, vec![], "").is_err());
    assert!(Digest::parse(DigestAlgorithm::Sha256, vec![0; 32], SHA256_HEX).is_err());
}

#[test]
fn a_valid_statement_yields_its_subjects_and_predicate_type() {
    let s = statement(statement_text(&one_subject(), "").as_bytes()).unwrap();
    assert_eq!(s.predicate_type, "https://slsa.dev/provenance/v1");
    assert_eq!(s.subjects.len(), 1);
    assert_eq!(
        s.subjects[0].digest_labels().collect::<Vec<_>>(),
        vec![format!("sha256:{SHA256_HEX}")]
    );
}

#[test]
fn oversized_statements_are_refused() {
    let pad = format!(
        r#","predicate":{{"pad":"{}"}}"#,
        "a".repeat(MAX_STATEMENT_BYTES)
    );
    let text =
        statement_text(&one_subject(), "").replace(r#","predicate":{"buildType":"x"}"#, &pad);
    let e = statement(text.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("at most"), "{e}");
}

#[test]
fn malformed_statements_are_refused() {
    let cases = [
        statement_text(&one_subject(), "").replace("Statement/v1", "Statement/v0.1"),
        statement_text("[]", ""),
        statement_text(&one_subject(), r#","extra":1"#),
        statement_text(&one_subject(), r#","predicateType":"x:y""#),
        statement_text(
            &one_subject().replace(SHA256_HEX, &SHA256_HEX.to_uppercase()),
            "",
        ),
        statement_text(&one_subject().replace(SHA256_HEX, &SHA256_HEX[..60]), ""),
        statement_text(&one_subject(), "").replace("https://slsa.dev/provenance/v1", "not a uri"),
        statement_text(&one_subject(), "").replace(r#"{"buildType":"x"}"#, "[]"),
        statement_text(&one_subject().replace("model.bin", "a\u{1}b"), ""),
        "[]".to_owned(),
        "not json".to_owned(),
    ];
    for case in &cases {
        assert!(statement(case.as_bytes()).is_err(), "accepted: {case}");
    }
}

#[test]
fn too_many_subjects_are_refused() {
    let one = format!(r#"{{"name":"s","digest":{{"sha256":"{SHA256_HEX}"}}}}"#);
    let many = format!("[{}]", vec![one; MAX_SUBJECTS + 1].join(","));
    assert!(statement(statement_text(&many, "").as_bytes()).is_err());
}
