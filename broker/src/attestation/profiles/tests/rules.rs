//! The rules every profile shares: one JSON type per claim, debug indicators, TEE kinds,
//! times and measurements.

use serde_json::{Value, json};

use super::*;

#[test]
fn any_debug_indicator_makes_the_result_debug() {
    let on = Some(json!(true));
    let cases = [
        (
            EAR,
            EAR_DEV_SNP,
            "/submods/cpu0/ear_attester_claims/claims/policy_debug_allowed",
            &on,
        ),
        (
            EAR,
            EAR_DEV_TDX,
            "/submods/cpu0/ear_attester_claims/claims/td_attributes/debug",
            &on,
        ),
        (
            EAR,
            EAR_LEGACY,
            "/submods/cpu0/ear.veraison.annotated-evidence/snp/policy_debug_allowed",
            &on,
        ),
        (ITA, ITA_V2, "/tdx/tdx_is_debuggable", &on),
        (ITA, ITA_V2, "/tdx/tdx_td_attributes_debug", &on),
        (ITA, ITA_V1, "/tdx_is_debuggable", &on),
        (MAA, MAA_SNP, "/x-ms-sevsnpvm-is-debuggable", &on),
        (MAA, MAA_TDX, "/tdx_td_attributes_debug", &on),
        (MAA, MAA_TDX, "/dbgstat", &Some(json!("enabled"))),
        (
            MAA,
            MAA_CVM,
            "/x-ms-isolation-tee/x-ms-sevsnpvm-is-debuggable",
            &on,
        ),
        (MAA, MAA_CVM, "/x-ms-azurevm-bootdebug-enabled", &on),
        (MAA, MAA_CVM, "/x-ms-azurevm-kerneldebug-enabled", &on),
        (MAA, MAA_CVM, "/x-ms-azurevm-hypervisordebug-enabled", &on),
        (
            MAA,
            MAA_CVM,
            "/x-ms-azurevm-debuggersdisabled",
            &Some(json!(false)),
        ),
    ];
    for (profile, text, at, value) in cases {
        let got = map(profile, &with(text, at, value.clone())).map(|m| m.debug);
        assert_eq!(got, Ok(true), "{at}");
    }
}

#[test]
fn a_result_without_any_debug_indicator_is_refused() {
    let cases: [(Profile, &str, &[&str]); 6] = [
        (
            EAR,
            EAR_DEV_SNP,
            &["/submods/cpu0/ear_attester_claims/claims/policy_debug_allowed"],
        ),
        (
            EAR,
            EAR_DEV_TDX,
            &["/submods/cpu0/ear_attester_claims/claims/td_attributes"],
        ),
        (
            ITA,
            ITA_V2,
            &["/tdx/tdx_is_debuggable", "/tdx/tdx_td_attributes_debug"],
        ),
        (MAA, MAA_SNP, &["/x-ms-sevsnpvm-is-debuggable"]),
        (MAA, MAA_TDX, &["/tdx_td_attributes_debug", "/dbgstat"]),
        (
            MAA,
            MAA_CVM,
            &["/x-ms-isolation-tee/x-ms-sevsnpvm-is-debuggable"],
        ),
    ];
    for (profile, text, paths) in cases {
        let mut doc = serde_json::to_string(&parse(text)).unwrap();
        for at in paths {
            doc = serde_json::to_string(&with(&doc, at, None)).unwrap();
        }
        assert_eq!(
            map(profile, &parse(&doc)),
            Err(ProfileRefusal::MissingDebug),
            "{paths:?}"
        );
    }
}

#[test]
fn a_result_without_a_tee_kind_is_refused() {
    let cases = [
        (EAR, EAR_DEV_SNP, "/submods/cpu0/ear_attester_claims/tee"),
        (EAR, EAR_DEV_SNP, "/submods/cpu0/ear_attester_claims"),
        (
            EAR,
            EAR_LEGACY,
            "/submods/cpu0/ear.veraison.annotated-evidence/snp",
        ),
        (
            EAR,
            EAR_LEGACY,
            "/submods/cpu0/ear.veraison.annotated-evidence",
        ),
        (ITA, ITA_V2, "/tdx/attester_type"),
        (ITA, ITA_V1, "/attester_type"),
        (MAA, MAA_SNP, "/x-ms-attestation-type"),
        (MAA, MAA_CVM, "/x-ms-isolation-tee"),
        (MAA, MAA_CVM, "/x-ms-isolation-tee/x-ms-attestation-type"),
    ];
    for (profile, text, at) in cases {
        assert_eq!(
            map(profile, &with(text, at, None)),
            Err(ProfileRefusal::MissingTee),
            "{at}"
        );
    }
}

#[test]
fn a_tee_kind_outside_the_list_is_refused() {
    let cases = [
        (
            EAR,
            EAR_DEV_SNP,
            "/submods/cpu0/ear_attester_claims/tee",
            "sgx",
        ),
        (
            EAR,
            EAR_DEV_SNP,
            "/submods/cpu0/ear_attester_claims/tee",
            "SNP",
        ),
        (
            EAR,
            EAR_DEV_SNP,
            "/submods/cpu0/ear_attester_claims/tee",
            "sample",
        ),
        (ITA, ITA_V2, "/tdx/attester_type", "SGX"),
        (ITA, ITA_V2, "/tdx/attester_type", "tdx"),
        (MAA, MAA_SNP, "/x-ms-attestation-type", "sgx"),
        (MAA, MAA_SNP, "/x-ms-attestation-type", "tpm"),
        (
            MAA,
            MAA_CVM,
            "/x-ms-isolation-tee/x-ms-attestation-type",
            "vbs",
        ),
    ];
    for (profile, text, at, tee) in cases {
        let got = map(profile, &with(text, at, Some(json!(tee))));
        assert_eq!(got, Err(ProfileRefusal::UnknownTee), "{at} = {tee}");
    }
    // Older Trustee names the TEE by the one claim set in the annotated evidence.
    let evidence = "/submods/cpu0/ear.veraison.annotated-evidence";
    let sample = with(EAR_LEGACY, &format!("{evidence}/sample"), Some(json!({})));
    let sample = with(
        &serde_json::to_string(&sample).unwrap(),
        &format!("{evidence}/snp"),
        None,
    );
    assert_eq!(map(EAR, &sample), Err(ProfileRefusal::UnknownTee));
    let two = with(EAR_LEGACY, &format!("{evidence}/tdx"), Some(json!({})));
    assert_eq!(map(EAR, &two), Err(ProfileRefusal::UnknownTee));
}

/// Every claim a profile reads: fixture, JSON pointer, and the name its refusal carries.
const TYPED_CLAIMS: &str = "
ear-dev-snp /eat_profile eat_profile
ear-dev-snp /exp exp
ear-dev-snp /ear_status ear_status
ear-dev-snp /submods submods
ear-dev-snp /submods/cpu0 submods.cpu0
ear-dev-snp /submods/cpu0/ear_status cpu0 status
ear-dev-snp /submods/cpu0/ear_attester_claims ear_attester_claims
ear-dev-snp /submods/cpu0/ear_attester_claims/tee ear_attester_claims.tee
ear-dev-snp /submods/cpu0/ear_attester_claims/claims ear_attester_claims.claims
ear-dev-snp /submods/cpu0/ear_attester_claims/claims/measurement measurement
ear-dev-snp /submods/cpu0/ear_attester_claims/claims/policy_debug_allowed policy_debug_allowed
ear-dev-snp /submods/cpu0/ear_verifier_claims ear_verifier_claims
ear-dev-snp /submods/cpu0/ear_verifier_claims/runtime_data ear_verifier_claims.runtime_data
ear-dev-snp /submods/cpu0/ear_verifier_claims/runtime_data/nonce runtime_data.nonce
ear-dev-snp /submods/cpu0/ear_verifier_claims/runtime_data/tee-pubkey runtime_data.tee-pubkey
ear-dev-snp /submods/cpu0/eat_nonce cpu0 eat_nonce
ear-dev-snp /eat_nonce eat_nonce
ear-dev-tdx /submods/cpu0/ear_attester_claims/claims/quote quote
ear-dev-tdx /submods/cpu0/ear_attester_claims/claims/quote/body quote.body
ear-dev-tdx /submods/cpu0/ear_attester_claims/claims/quote/body/mr_td quote.body.mr_td
ear-dev-tdx /submods/cpu0/ear_attester_claims/claims/td_attributes td_attributes
ear-dev-tdx /submods/cpu0/ear_attester_claims/claims/td_attributes/debug td_attributes.debug
ear-dev-tdx /submods/cpu0/ear_attester_claims/claims/tcb_status tcb_status
ear-trustee-legacy /submods/cpu0/ear.status cpu0 status
ear-trustee-legacy /submods/cpu0/ear.veraison.annotated-evidence ear.veraison.annotated-evidence
ear-trustee-legacy /submods/cpu0/ear.veraison.annotated-evidence/snp annotated-evidence tee claims
ear-trustee-legacy /submods/cpu0/ear.veraison.annotated-evidence/snp/measurement measurement
ear-trustee-legacy /submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims runtime_data_claims
ear-trustee-legacy /submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/nonce runtime_data.nonce
ita-v2 /tdx tdx
ita-v2 /tdx/attester_type attester_type
ita-v2 /tdx/tdx_mrtd tdx_mrtd
ita-v2 /tdx/tdx_is_debuggable tdx_is_debuggable
ita-v2 /tdx/tdx_td_attributes_debug tdx_td_attributes_debug
ita-v2 /tdx/attester_tcb_status attester_tcb_status
ita-v2 /tdx/attester_runtime_data attester_runtime_data
ita-v2 /tdx/attester_runtime_data/nonce attester_runtime_data.nonce
ita-v2 /tdx/attester_runtime_data/tee-pubkey attester_runtime_data.tee-pubkey
ita-v1 /attester_type attester_type
ita-v1 /tdx_mrtd tdx_mrtd
ita-v1 /attester_held_data attester_held_data
maa-sevsnpvm /x-ms-attestation-type x-ms-attestation-type
maa-sevsnpvm /x-ms-runtime x-ms-runtime
maa-sevsnpvm /x-ms-runtime/nonce x-ms-runtime.nonce
maa-sevsnpvm /x-ms-runtime/keys x-ms-runtime.keys
maa-sevsnpvm /x-ms-runtime/keys/0 x-ms-runtime.keys
maa-sevsnpvm /x-ms-runtime/keys/0/kid x-ms-runtime.keys.kid
maa-sevsnpvm /nonce nonce
maa-sevsnpvm /x-ms-sevsnpvm-launchmeasurement x-ms-sevsnpvm-launchmeasurement
maa-sevsnpvm /x-ms-sevsnpvm-is-debuggable x-ms-sevsnpvm-is-debuggable
maa-tdxvm /tdx_mrtd tdx_mrtd
maa-tdxvm /tdx_td_attributes_debug tdx_td_attributes_debug
maa-tdxvm /dbgstat dbgstat
maa-tdxvm /attester_tcb_status attester_tcb_status
maa-tdxvm /x-ms-runtime/tee-pubkey x-ms-runtime.tee-pubkey
maa-azurevm /x-ms-isolation-tee x-ms-isolation-tee
maa-azurevm /x-ms-isolation-tee/x-ms-attestation-type x-ms-isolation-tee.x-ms-attestation-type
maa-azurevm /x-ms-isolation-tee/x-ms-sevsnpvm-launchmeasurement x-ms-sevsnpvm-launchmeasurement
maa-azurevm /x-ms-runtime/client-payload x-ms-runtime.client-payload
maa-azurevm /x-ms-runtime/client-payload/nonce x-ms-runtime.client-payload.nonce
maa-azurevm /x-ms-azurevm-kerneldebug-enabled x-ms-azurevm-kerneldebug-enabled
maa-azurevm /x-ms-azurevm-debuggersdisabled x-ms-azurevm-debuggersdisabled
";

/// [`TYPED_CLAIMS`] as (profile, fixture text, pointer, name).
pub(super) fn typed_claims() -> Vec<(Profile, &'static str, &'static str, &'static str)> {
    let fixture = |name| FIXTURES.iter().find(|f| f.0 == name).expect(name);
    TYPED_CLAIMS
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut fields = line.splitn(3, ' ');
            let (name, at, claim) = (fields.next(), fields.next(), fields.next());
            let &(_, profile, text) = fixture(name.unwrap());
            (profile, text, at.unwrap(), claim.unwrap())
        })
        .collect()
}

/// A value of another JSON type than `v`.
fn other_type(v: &Value) -> Value {
    match v {
        Value::String(_) => json!(7),
        Value::Bool(_) | Value::Number(_) => json!("1"),
        Value::Object(_) => json!([]),
        Value::Array(_) => json!({}),
        Value::Null => json!(0),
    }
}

#[test]
fn every_claim_read_with_the_wrong_json_type_is_refused_by_name() {
    for (profile, text, at, name) in typed_claims() {
        // A claim the fixture lacks (an optional nonce) is added with the wrong type.
        let original = Value::Object(parse(text))
            .pointer(at)
            .cloned()
            .unwrap_or(json!("x"));
        for wrong in [other_type(&original), Value::Null] {
            let got = map(profile, &with(text, at, Some(wrong.clone())));
            let Err(ProfileRefusal::ClaimType(got)) = got else {
                panic!("{at} = {wrong}: {got:?}");
            };
            assert_eq!(got, name, "{at} = {wrong}");
        }
    }
}

#[test]
fn iat_must_be_an_integer() {
    for (_, profile, text) in FIXTURES {
        for bad in [
            Some(json!(1.7966e9)),
            Some(json!("1796670000")),
            Some(json!(-1)),
            None,
        ] {
            let got = map(profile, &with(text, "/iat", bad.clone()));
            assert_eq!(got, Err(ProfileRefusal::MissingIat), "{text}: {bad:?}");
        }
    }
}

#[test]
fn exp_is_optional() {
    for (name, profile, text) in FIXTURES {
        assert_eq!(
            map(profile, &with(text, "/exp", None)).map(|m| m.exp),
            Ok(None),
            "{name}"
        );
    }
}

/// Where each fixture keeps its measurement.
const MEASUREMENTS: [(Profile, &str, &str); 8] = [
    (
        EAR,
        EAR_DEV_SNP,
        "/submods/cpu0/ear_attester_claims/claims/measurement",
    ),
    (
        EAR,
        EAR_DEV_TDX,
        "/submods/cpu0/ear_attester_claims/claims/quote/body/mr_td",
    ),
    (
        EAR,
        EAR_LEGACY,
        "/submods/cpu0/ear.veraison.annotated-evidence/snp/measurement",
    ),
    (ITA, ITA_V2, "/tdx/tdx_mrtd"),
    (ITA, ITA_V1, "/tdx_mrtd"),
    (MAA, MAA_SNP, "/x-ms-sevsnpvm-launchmeasurement"),
    (MAA, MAA_TDX, "/tdx_mrtd"),
    (
        MAA,
        MAA_CVM,
        "/x-ms-isolation-tee/x-ms-sevsnpvm-launchmeasurement",
    ),
];

#[test]
fn a_measurement_must_be_64_to_192_hex_digits() {
    let bad = [
        "ab".repeat(48)[..95].to_owned(),      // odd length
        format!("{}g", "ab".repeat(47)) + "a", // not hex
        "ab".repeat(31),                       // too short
        "ab".repeat(97),                       // too long
        format!("0x{}", "ab".repeat(47)),      // prefixed
        String::new(),
    ];
    for (profile, text, at) in MEASUREMENTS {
        for hex in &bad {
            let got = map(profile, &with(text, at, Some(json!(hex))));
            assert_eq!(got, Err(ProfileRefusal::BadMeasurement), "{at} = {hex}");
        }
        let missing = map(profile, &with(text, at, None));
        assert_eq!(missing, Err(ProfileRefusal::BadMeasurement), "{at} absent");
        for (hex, want) in [
            ("AB".repeat(32), "ab".repeat(32)),
            ("Cd".repeat(96), "cd".repeat(96)),
        ] {
            let got = map(profile, &with(text, at, Some(json!(hex)))).map(|m| m.measurement);
            assert_eq!(got, Ok(want), "{at}");
        }
    }
}
