//! EAR: the spelling chosen by `eat_profile`, statuses, and where the nonce comes from.

use serde_json::{Map, Value, json};

use super::*;

/// The dev token with every EAR claim name in its legacy dotted spelling.
fn dev_token_dotted() -> String {
    EAR_DEV_SNP
        .replace("\"ear_status\"", "\"ear.status\"")
        .replace("ear_trustworthiness_vector", "ear.trustworthiness-vector")
        .replace("ear_verifier_id", "ear.verifier-id")
        .replace(
            "\"ear_appraisal_policy_ids\":[\"keybroker-dev\"]",
            "\"ear.appraisal-policy-id\":\"keybroker-dev\"",
        )
}

#[test]
fn the_ear_spelling_is_chosen_by_eat_profile_alone() {
    const DRAFT: &str = "tag:ietf.org,2026:rats/ear#03";
    const VERAISON: &str = "tag:github.com,2023:veraison/ear";
    const TRUSTEE: &str = "tag:github.com,2024:confidential-containers/Trustee";
    let profile = |text: &str, tag: &str| map(EAR, &with(text, "/eat_profile", Some(json!(tag))));
    // Dotted names under the -03 tag, underscore names under a legacy tag: no status is read.
    assert_eq!(
        profile(&dev_token_dotted(), DRAFT),
        Err(ProfileRefusal::NotAffirming)
    );
    assert_eq!(
        profile(EAR_LEGACY, DRAFT),
        Err(ProfileRefusal::NotAffirming)
    );
    assert_eq!(
        profile(EAR_DEV_SNP, VERAISON),
        Err(ProfileRefusal::NotAffirming)
    );
    assert_eq!(
        profile(EAR_DEV_SNP, TRUSTEE),
        Err(ProfileRefusal::NotAffirming)
    );
    // Both legacy tags read the dotted names.
    let legacy = map(EAR, &parse(EAR_LEGACY));
    assert!(legacy.is_ok());
    assert_eq!(profile(EAR_LEGACY, VERAISON), legacy);
    // A -03 status does not make the dotted attester claims readable.
    let mixed = with(EAR_LEGACY, "/eat_profile", Some(json!(DRAFT)));
    let mixed = with(
        &serde_json::to_string(&mixed).unwrap(),
        "/submods/cpu0/ear_status",
        Some(json!("affirming")),
    );
    assert_eq!(map(EAR, &mixed), Err(ProfileRefusal::MissingTee));
}

#[test]
fn an_unknown_eat_profile_is_refused() {
    for tag in [
        "tag:ietf.org,2026:rats/ear#04",
        "tag:ietf.org,2026:rats/ear",
        "tag:github.com,2023:veraison/ear ",
        "https://aka.ms/maa-eat-profile-tdxvm",
        "",
    ] {
        let got = map(EAR, &with(EAR_DEV_SNP, "/eat_profile", Some(json!(tag))));
        assert_eq!(got, Err(ProfileRefusal::UnknownEatProfile), "{tag}");
    }
    let got = map(EAR, &with(EAR_DEV_SNP, "/eat_profile", None));
    assert_eq!(got, Err(ProfileRefusal::UnknownEatProfile));
}

#[test]
fn an_ear_status_other_than_affirming_is_refused() {
    let cases = [
        (EAR_DEV_SNP, "/ear_status", Some(json!("warning"))),
        (
            EAR_DEV_SNP,
            "/submods/cpu0/ear_status",
            Some(json!("contraindicated")),
        ),
        (EAR_DEV_SNP, "/submods/cpu0/ear_status", Some(json!("none"))),
        (
            EAR_DEV_SNP,
            "/submods/cpu0/ear_status",
            Some(json!("Affirming")),
        ),
        (EAR_DEV_SNP, "/submods/cpu0/ear_status", None),
        (EAR_DEV_SNP, "/submods/cpu0", None),
        (EAR_DEV_SNP, "/submods", None),
        (
            EAR_LEGACY,
            "/submods/cpu0/ear.status",
            Some(json!("warning")),
        ),
        (EAR_LEGACY, "/submods/cpu0/ear.status", None),
    ];
    for (text, at, value) in cases {
        let got = map(EAR, &with(text, at, value.clone()));
        assert_eq!(got, Err(ProfileRefusal::NotAffirming), "{at} = {value:?}");
    }
    // The top status is optional.
    assert!(map(EAR, &with(EAR_DEV_SNP, "/ear_status", None)).is_ok());
}

#[test]
fn the_ear_nonce_comes_from_runtime_data_then_the_submod_then_the_top() {
    let runtime = "/submods/cpu0/ear_verifier_claims/runtime_data/nonce";
    let nonce = |doc: &Map<String, Value>| map(EAR, doc).map(|m| m.nonce);
    let mut doc = with(
        EAR_DEV_SNP,
        "/submods/cpu0/eat_nonce",
        Some(json!("submod-nonce")),
    );
    doc.insert("eat_nonce".to_owned(), json!("top-nonce"));
    let text = serde_json::to_string(&doc).unwrap();
    assert_eq!(
        nonce(&doc),
        Ok(Some((NONCE.to_owned(), NonceBinding::Evidence)))
    );
    let doc = with(&text, runtime, None);
    assert_eq!(
        nonce(&doc),
        Ok(Some(("submod-nonce".to_owned(), NonceBinding::Evidence)))
    );
    let doc = with(
        &serde_json::to_string(&doc).unwrap(),
        "/submods/cpu0/eat_nonce",
        None,
    );
    assert_eq!(
        nonce(&doc),
        Ok(Some(("top-nonce".to_owned(), NonceBinding::Result)))
    );
    assert_eq!(nonce(&with(EAR_DEV_SNP, runtime, None)), Ok(None));
    // The legacy spelling has no submod nonce: it is not read.
    let legacy = with(EAR_LEGACY, "/submods/cpu0/eat_nonce", Some(json!(5)));
    assert!(map(EAR, &legacy).is_ok());
}
