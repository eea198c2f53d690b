//! No payload makes a mapper panic.

use proptest::prelude::*;
use serde_json::{Map, Value};

use super::rules::typed_claims;
use super::*;

/// Claim names the profiles read, so generated objects reach past the first check.
const NAMES: &[&str] = &[
    "eat_profile",
    "iat",
    "exp",
    "ear_status",
    "ear.status",
    "submods",
    "cpu0",
    "eat_nonce",
    "ear_attester_claims",
    "ear_verifier_claims",
    "ear.veraison.annotated-evidence",
    "tee",
    "claims",
    "measurement",
    "policy_debug_allowed",
    "quote",
    "body",
    "mr_td",
    "td_attributes",
    "debug",
    "tcb_status",
    "runtime_data",
    "runtime_data_claims",
    "nonce",
    "tee-pubkey",
    "kty",
    "crv",
    "x",
    "kid",
    "tdx",
    "attester_type",
    "tdx_mrtd",
    "tdx_is_debuggable",
    "tdx_td_attributes_debug",
    "attester_runtime_data",
    "attester_held_data",
    "x-ms-attestation-type",
    "x-ms-runtime",
    "keys",
    "client-payload",
    "x-ms-isolation-tee",
    "x-ms-sevsnpvm-launchmeasurement",
    "x-ms-sevsnpvm-is-debuggable",
    "dbgstat",
    "snp",
];

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            "tag:ietf.org,2026:rats/ear#03",
            "tag:github.com,2024:confidential-containers/Trustee",
            "affirming",
            "snp",
            "tdx",
            "TDX",
            "sevsnpvm",
            "tdxvm",
            "azurevm",
            "OKP",
            "X25519",
            "RSA",
            "keybroker-hpke",
            "disabled",
            X25519,
            M_SNP,
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(NAMES).prop_map(str::to_owned),
        "[a-z_.-]{1,8}"
    ]
}

proptest! {
    /// No object makes a mapper panic: it maps or refuses.
    #[test]
    fn mapping_never_panics(entries in prop::collection::vec((key(), arbitrary_json()), 0..10)) {
        let payload: Map<String, Value> = entries.into_iter().collect();
        for profile in [EAR, ITA, MAA] {
            let _ = map(profile, &payload);
        }
    }

    /// Any fixture with one claim replaced by arbitrary JSON maps or refuses, never panics.
    #[test]
    fn a_mutated_fixture_never_panics(
        which in 0..FIXTURES.len(), claim in any::<prop::sample::Index>(), value in arbitrary_json(),
    ) {
        let (_, profile, text) = FIXTURES[which];
        let claims = typed_claims();
        let (_, _, at, _) = claims[claim.index(claims.len())];
        let mut doc = Value::Object(parse(text));
        if let Some(slot) = doc.pointer_mut(at) {
            *slot = value;
        }
        if let Value::Object(payload) = doc {
            let _ = map(profile, &payload);
        }
    }
}
