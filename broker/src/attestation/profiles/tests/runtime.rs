//! Runtime data: nonces and recipient keys by profile.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

use super::*;

#[test]
fn the_maa_nonce_prefers_the_runtime_data() {
    let nonce = |doc: &Map<String, Value>| map(MAA, doc).map(|m| m.nonce);
    let doc = with(MAA_SNP, "/nonce", Some(json!("echoed")));
    assert_eq!(
        nonce(&doc),
        Ok(Some((NONCE.to_owned(), NonceBinding::Evidence)))
    );
    let doc = with(
        &serde_json::to_string(&doc).unwrap(),
        "/x-ms-runtime/nonce",
        None,
    );
    assert_eq!(
        nonce(&doc),
        Ok(Some(("echoed".to_owned(), NonceBinding::Result)))
    );
    let doc = with(MAA_CVM, "/x-ms-runtime/client-payload/nonce", None);
    assert_eq!(nonce(&doc), Ok(None));
}

#[test]
fn the_ita_runtime_data_may_come_from_the_held_data() {
    let held = |data: &[u8]| {
        with(
            ITA_V1,
            "/attester_held_data",
            Some(json!(STANDARD.encode(data))),
        )
    };
    let got = map(ITA, &held(b"\x00\x01 raw user data")).map(|m| (m.nonce, m.recipient));
    assert_eq!(got, Ok((None, None)));
    let got = map(ITA, &held(br#"["nonce"]"#)).map(|m| m.nonce);
    assert_eq!(got, Ok(None));
    let got = map(ITA, &held(br#"{"nonce":"a","nonce":"b"}"#));
    assert_eq!(got, Err(ProfileRefusal::ClaimType("attester_held_data")));
    let got = map(ITA, &held(br#"{"nonce":5}"#));
    assert_eq!(
        got,
        Err(ProfileRefusal::ClaimType("attester_runtime_data.nonce"))
    );
    let got = map(
        ITA,
        &with(ITA_V1, "/attester_held_data", Some(json!("not base64!"))),
    );
    assert_eq!(got.map(|m| m.nonce), Ok(None));
    // Parsed runtime data wins over the held data.
    let v2 = with(
        ITA_V2,
        "/tdx/attester_held_data",
        Some(json!(STANDARD.encode(br#"{"nonce":"held"}"#))),
    );
    assert_eq!(
        map(ITA, &v2).map(|m| m.nonce),
        Ok(Some((NONCE.to_owned(), NonceBinding::Evidence)))
    );
}

/// Where each fixture's recipient JWK sits.
const RECIPIENTS: [(Profile, &str, &str); 6] = [
    (
        EAR,
        EAR_DEV_SNP,
        "/submods/cpu0/ear_verifier_claims/runtime_data/tee-pubkey",
    ),
    (
        EAR,
        EAR_LEGACY,
        "/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey",
    ),
    (ITA, ITA_V2, "/tdx/attester_runtime_data/tee-pubkey"),
    (MAA, MAA_SNP, "/x-ms-runtime/keys/0"),
    (MAA, MAA_TDX, "/x-ms-runtime/tee-pubkey"),
    (MAA, MAA_CVM, "/x-ms-runtime/keys/1"),
];

#[test]
fn recipient_keys_are_sorted_by_type() {
    let kid = "keybroker-hpke";
    let unsupported = |what: &str| Ok(Some(BoundKey::Unsupported(what.to_owned())));
    let short = URL_SAFE_NO_PAD.encode([7u8; 31]);
    let cases = [
        (
            json!({"kid":kid,"kty":"OKP","crv":"X25519","x":X25519}),
            Ok(Some(x25519())),
        ),
        (
            json!({"kid":kid,"kty":"RSA","e":"AQAB","n":"tXkRQzs"}),
            unsupported("RSA"),
        ),
        (
            json!({"kid":kid,"kty":"EC","crv":"P-256","x":"AA","y":"AA"}),
            unsupported("EC P-256"),
        ),
        (
            json!({"kid":kid,"kty":"OKP","crv":"Ed25519","x":X25519}),
            unsupported("OKP Ed25519"),
        ),
        (
            json!({"kid":kid,"kty":"EC","crv":"<script>"}),
            unsupported("EC"),
        ),
    ];
    let malformed = [
        json!({"kid":kid,"kty":"OKP","crv":"X25519","x":short}),
        json!({"kid":kid,"kty":"OKP","crv":"X25519","x":format!("{X25519}=")}),
        json!({"kid":kid,"kty":"OKP","crv":"X25519"}),
        json!({"kid":kid,"crv":"X25519","x":X25519}),
        json!({"kid":kid,"kty":"oct","k":"AA"}),
        json!({"kid":kid,"kty":"OKP","crv":25519,"x":X25519}),
    ];
    for (profile, text, at) in RECIPIENTS {
        for (jwk, want) in &cases {
            let got = map(profile, &with(text, at, Some(jwk.clone()))).map(|m| m.recipient);
            assert_eq!(&got, want, "{at} = {jwk}");
        }
        for jwk in &malformed {
            let got = map(profile, &with(text, at, Some(jwk.clone())));
            assert!(
                matches!(got, Err(ProfileRefusal::ClaimType(_))),
                "{at} = {jwk}: {got:?}"
            );
        }
    }
    for (profile, text, at) in &RECIPIENTS[..3] {
        assert_eq!(
            map(*profile, &with(text, at, None)).map(|m| m.recipient),
            Ok(None)
        );
    }
}

#[test]
fn maa_picks_the_recipient_by_kid_only() {
    // The vTPM's own RSA keys are not ours: no recipient.
    assert_eq!(map(MAA, &parse(MAA_CVM)).map(|m| m.recipient), Ok(None));
    let ours = json!({"kid":"keybroker-hpke","kty":"OKP","crv":"X25519","x":X25519});
    let doc = with(
        MAA_SNP,
        "/x-ms-runtime/keys",
        Some(json!([ours.clone(), ours])),
    );
    assert_eq!(
        map(MAA, &doc),
        Err(ProfileRefusal::ClaimType("x-ms-runtime.keys"))
    );
    let doc = with(MAA_SNP, "/x-ms-runtime/keys/0/kid", Some(json!("HCLAkPub")));
    assert_eq!(map(MAA, &doc).map(|m| m.recipient), Ok(None));
}
