//! The profile mappers against made-up payloads shaped like the brief's examples
//! (`attestation/testdata/`), and what each refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ear;
mod proptests;
mod rules;
mod runtime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::*;

const EAR_DEV_SNP: &str = include_str!("../../testdata/ear-dev-snp.json");
const EAR_DEV_TDX: &str = include_str!("../../testdata/ear-dev-tdx.json");
const EAR_LEGACY: &str = include_str!("../../testdata/ear-trustee-legacy.json");
const ITA_V2: &str = include_str!("../../testdata/ita-v2-tdx.json");
const ITA_V1: &str = include_str!("../../testdata/ita-v1-tdx.json");
const MAA_SNP: &str = include_str!("../../testdata/maa-sevsnpvm.json");
const MAA_TDX: &str = include_str!("../../testdata/maa-tdxvm.json");
const MAA_CVM: &str = include_str!("../../testdata/maa-azurevm.json");

const EAR: Profile = Profile::Ear(EarLayout::Trustee);
const ITA: Profile = Profile::IntelTrustAuthority;
const MAA: Profile = Profile::AzureAttestation;

/// Every fixture with its profile.
const FIXTURES: [(&str, Profile, &str); 8] = [
    ("ear-dev-snp", EAR, EAR_DEV_SNP),
    ("ear-dev-tdx", EAR, EAR_DEV_TDX),
    ("ear-trustee-legacy", EAR, EAR_LEGACY),
    ("ita-v2", ITA, ITA_V2),
    ("ita-v1", ITA, ITA_V1),
    ("maa-sevsnpvm", MAA, MAA_SNP),
    ("maa-tdxvm", MAA, MAA_TDX),
    ("maa-azurevm", MAA, MAA_CVM),
];

const NONCE: &str = "ARsWsd9Ti6Etw_l-27hcqnAAAAAAAAAAAOO5ik2jGhJ9S95uQwM_Zro";
const X25519: &str = "glTDKakoUPbVOd03b0gW7idkUX2l4CNVFK9DMWRIDXo";
const M_SNP: &str = "a8ac7ff237deeb24a88fc850f1114fe643a26810cd2552f31a0b5b239a086c59853720a89ad0b0b653d62353434a33e1";
const M_TDX: &str = "ee692bcf983bc8f4ff15a3139e488b90b0a320e49e929e35b4ba3e517eca4a48540851e732c2ef105106edf0c352d69b";
const M_MAA_SNP: &str = "18210afc65030adecbbb63d1ab386fc8451c066e4fc6623ac45018e1579c273e5d0502b94ee813b3f7999205730e5c4f";
const M_MAA_TDX: &str = "6812a63b5807f88b946c1702f23b200615da789ad843ec32a79f0326cd9e7f739cebd72862b466b0d62602e0b522c645";
const M_ITA: &str = "c0117a9b3fe74b853f384845a8227fbf67ec142439f5466bb636ea8418ce4221588f367da1c0d2f43560ac1b89fe4c81";

fn parse(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text).unwrap() {
        Value::Object(map) => map,
        other => panic!("fixture is not an object: {other}"),
    }
}

/// `text` with the value at JSON pointer `at` replaced (`Some`) or removed (`None`).
fn with(text: &str, at: &str, value: Option<Value>) -> Map<String, Value> {
    let mut doc = Value::Object(parse(text));
    let (parent, key) = at.rsplit_once('/').unwrap();
    match (doc.pointer_mut(parent), value) {
        (Some(Value::Object(map)), Some(v)) => {
            map.insert(key.to_owned(), v);
        }
        (Some(Value::Object(map)), None) => {
            assert!(map.remove(key).is_some(), "{at} not in the fixture");
        }
        (Some(Value::Array(items)), Some(v)) => items[key.parse::<usize>().unwrap()] = v,
        _ => panic!("{at}: no such parent"),
    }
    match doc {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

fn x25519() -> BoundKey {
    BoundKey::X25519(URL_SAFE_NO_PAD.decode(X25519).unwrap().try_into().unwrap())
}

fn mapped(tee: Tee, measurement: &str, tcb: &str, exp: u64, nonce: NonceBinding) -> Mapped {
    Mapped {
        tee,
        measurement: measurement.to_owned(),
        debug: false,
        tcb_status: tcb.to_owned(),
        iat: 1_796_670_000,
        exp: Some(exp),
        nonce: Some((NONCE.to_owned(), nonce)),
        recipient: Some(x25519()),
    }
}

#[test]
fn each_fixture_maps_to_its_facts() {
    use NonceBinding::{Evidence, Result as Echoed};
    let (ear_exp, maa_exp) = (1_796_670_300, 1_796_698_800);
    let cases = [
        (
            EAR,
            EAR_DEV_SNP,
            mapped(Tee::SevSnp, M_SNP, "", ear_exp, Evidence),
        ),
        (
            EAR,
            EAR_DEV_TDX,
            mapped(Tee::Tdx, M_TDX, "UpToDate", ear_exp, Evidence),
        ),
        (
            EAR,
            EAR_LEGACY,
            mapped(Tee::SevSnp, M_SNP, "", ear_exp, Evidence),
        ),
        (
            ITA,
            ITA_V2,
            mapped(Tee::Tdx, M_ITA, "UpToDate", ear_exp, Evidence),
        ),
        (
            ITA,
            ITA_V1,
            mapped(Tee::Tdx, M_ITA, "OutOfDate", ear_exp, Evidence),
        ),
        (
            MAA,
            MAA_SNP,
            mapped(Tee::SevSnp, M_MAA_SNP, "", maa_exp, Evidence),
        ),
        (
            MAA,
            MAA_TDX,
            mapped(Tee::Tdx, M_MAA_TDX, "UpToDate", maa_exp, Evidence),
        ),
        (
            MAA,
            MAA_CVM,
            Mapped {
                recipient: None,
                ..mapped(Tee::SevSnp, M_MAA_SNP, "", maa_exp, Echoed)
            },
        ),
    ];
    for (profile, text, want) in cases {
        assert_eq!(map(profile, &parse(text)), Ok(want), "{text}");
    }
}

#[test]
fn unknown_claims_are_ignored() {
    for (name, profile, text) in FIXTURES {
        let mut doc = parse(text);
        let want = map(profile, &doc);
        doc.insert("x-unknown".to_owned(), json!({"tee": "sgx", "debug": true}));
        doc.insert("ear.status".to_owned(), json!(7));
        assert_eq!(map(profile, &doc), want, "{name}");
    }
}
