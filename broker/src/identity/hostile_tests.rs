//! Hostile identity cases, table-driven: each token must be refused for one specific
//! [`Reason`], and the valid RS256/PS256/ES256/EdDSA tokens must pass. Leeway and lifetime
//! edges are tested to the second.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::{IssuerSettings, JwtVerifier, Reason};

const ISS: &str = "https://cluster-a.test";
const ISS_B: &str = "https://cluster-b.test";
const AUD: &str = "keybroker";
const NOW: u64 = 1_700_000_000;
const RSA_KEY: &str = include_str!("testdata/rsa-test-key.pem");
const RSA_PUB: &str = include_str!("testdata/rsa-test-pub.pem");
const RSA_JWK: &str = include_str!("testdata/rsa-test-pub.jwk.json");

pub(crate) struct Keys {
    pub(crate) dir: tempfile::TempDir,
    verifier: JwtVerifier,
    rsa: EncodingKey,
    ec: EncodingKey,
    pub(crate) ed: EncodingKey,
    cluster_b: EncodingKey,
    attacker: EncodingKey,
}

fn ed25519() -> (EncodingKey, Value) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let x = URL_SAFE_NO_PAD.encode(kp.public_key_raw());
    let key = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap();
    (key, json!({"kty": "OKP", "crv": "Ed25519", "x": x}))
}

fn with(mut jwk: Value, kid: &str, alg: &str) -> Value {
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg);
    jwk["use"] = json!("sig");
    jwk
}

fn settings(issuer: &str, jwks: std::path::PathBuf) -> IssuerSettings {
    IssuerSettings {
        issuer: issuer.into(),
        audiences: vec![AUD.into(), "keybroker-admin".into()],
        jwks: crate::config::JwksSource::File(jwks),
        algorithms: vec![
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::EdDSA,
        ],
        max_token_lifetime: Duration::from_secs(3600),
        leeway: Duration::from_secs(30),
        job_claim: Some("job".into()),
        region_claim: None,
        cluster: Some("train-a".into()),
        region: Some("eu-west-1".into()),
        jurisdiction: Some("EU".into()),
    }
}

pub(crate) fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let (ed, ed_jwk) = ed25519();
    let (cluster_b, b_jwk) = ed25519();
    let (attacker, _) = ed25519();
    let ec_kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = ec_kp.public_key_raw();
    let ec_jwk = json!({"kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
    let ec = EncodingKey::from_ec_pem(ec_kp.serialize_pem().as_bytes()).unwrap();
    let rsa_jwk: Value = serde_json::from_str(RSA_JWK).unwrap();
    let a = json!({"keys": [with(rsa_jwk.clone(), "rsa1", "RS256"), with(rsa_jwk, "rsa-ps", "PS256"),
        with(ec_jwk, "ec1", "ES256"), with(ed_jwk, "ed1", "EdDSA")]});
    let b = json!({"keys": [with(b_jwk, "b1", "EdDSA")]});
    std::fs::write(dir.path().join("a.json"), a.to_string()).unwrap();
    std::fs::write(dir.path().join("b.json"), b.to_string()).unwrap();
    let verifier = JwtVerifier::new(vec![
        settings(ISS, dir.path().join("a.json")),
        settings(ISS_B, dir.path().join("b.json")),
    ])
    .unwrap();
    Keys {
        dir,
        verifier,
        rsa: EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
        ec,
        ed,
        cluster_b,
        attacker,
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "system:serviceaccount:ml:trainer", "aud": AUD,
           "iat": NOW, "nbf": NOW, "exp": NOW + 600, "job": "job-1",
           "kubernetes.io": {"namespace": "ml", "serviceaccount": {"name": "trainer", "uid": "u1"},
                             "pod": {"name": "p-1", "uid": "u2"}}})
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Signs exactly these header and payload texts (duplicates and odd types survive).
pub(crate) fn raw(header: &str, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let msg = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
    format!("{msg}.{sig}")
}

fn ed_token(payload: &Value, k: &Keys) -> String {
    raw(
        r#"{"alg":"EdDSA","kid":"ed1","typ":"JWT"}"#,
        &payload.to_string(),
        &k.ed,
        Algorithm::EdDSA,
    )
}

fn edit(f: impl FnOnce(&mut Value)) -> Value {
    let mut c = claims();
    f(&mut c);
    c
}

fn ed_header_with(extra: &str) -> String {
    format!(r#"{{"alg":"EdDSA","kid":"ed1",{extra}}}"#)
}

/// The JWS-level hostile cases (structure, header, algorithm, key, signature, size, duplicate
/// keys) over any payload `body` signed by `k`'s set "a" (kid `ed1`): shared by workload JWTs
/// and attestation results (`crate::attestation`), which run the same checks.
#[allow(clippy::too_many_lines)] // one row per hostile case reads best as one table
pub(crate) fn jws_cases(k: &Keys, body: &str) -> Vec<(&'static str, String, Reason)> {
    let hdr = r#"{"alg":"EdDSA","kid":"ed1"}"#;
    let ed = |h: &str, p: &str| raw(h, p, &k.ed, Algorithm::EdDSA);
    let good = ed(r#"{"alg":"EdDSA","kid":"ed1","typ":"JWT"}"#, body);
    let (gh, gp, gs) = {
        let mut p = good.split('.');
        (
            p.next().unwrap().to_owned(),
            p.next().unwrap().to_owned(),
            p.next().unwrap().to_owned(),
        )
    };
    // The same payload with one more claim: what the signature covered no longer matches.
    let tampered = b64(&body.replacen('{', r#"{"x-tampered":true,"#, 1));
    let hmac = EncodingKey::from_secret(RSA_PUB.as_bytes());
    let body = body.to_owned();
    vec![
        (
            "alg none",
            format!("{}.{}.", b64(r#"{"alg":"none","kid":"ed1"}"#), b64(&body)),
            Reason::AlgNotAllowed,
        ),
        (
            "alg NoNe",
            format!("{}.{}.", b64(r#"{"alg":"NoNe","kid":"ed1"}"#), b64(&body)),
            Reason::AlgNotAllowed,
        ),
        (
            "HS256 keyed with the RSA public key",
            raw(
                r#"{"alg":"HS256","kid":"rsa1"}"#,
                &body,
                &hmac,
                Algorithm::HS256,
            ),
            Reason::AlgNotAllowed,
        ),
        (
            "ES256 header on an RSA key",
            raw(
                r#"{"alg":"ES256","kid":"rsa1"}"#,
                &body,
                &k.ec,
                Algorithm::ES256,
            ),
            Reason::AlgKeyMismatch,
        ),
        (
            "RS256 header on the EdDSA key",
            raw(
                r#"{"alg":"RS256","kid":"ed1"}"#,
                &body,
                &k.rsa,
                Algorithm::RS256,
            ),
            Reason::AlgKeyMismatch,
        ),
        (
            "alg as a number",
            ed(r#"{"alg":1,"kid":"ed1"}"#, &body),
            Reason::AlgNotAllowed,
        ),
        (
            "cluster B key claiming cluster A issuer",
            raw(
                r#"{"alg":"EdDSA","kid":"b1"}"#,
                &body,
                &k.cluster_b,
                Algorithm::EdDSA,
            ),
            Reason::UnknownKid,
        ),
        (
            "attacker key reusing our kid",
            raw(hdr, &body, &k.attacker, Algorithm::EdDSA),
            Reason::BadSignature,
        ),
        (
            "missing kid",
            ed(r#"{"alg":"EdDSA"}"#, &body),
            Reason::MissingKid,
        ),
        (
            "unknown kid",
            ed(r#"{"alg":"EdDSA","kid":"nope"}"#, &body),
            Reason::UnknownKid,
        ),
        (
            "kid as number",
            ed(r#"{"alg":"EdDSA","kid":7}"#, &body),
            Reason::HeaderField,
        ),
        (
            "tampered payload",
            format!("{gh}.{tampered}.{gs}"),
            Reason::BadSignature,
        ),
        (
            "stripped signature",
            format!("{gh}.{gp}."),
            Reason::BadSignature,
        ),
        (
            "truncated signature",
            format!("{gh}.{gp}.{}", &gs[..gs.len() - 4]),
            Reason::BadSignature,
        ),
        (
            "signature not base64url",
            format!("{gh}.{gp}.{gs}=="),
            Reason::BadSignature,
        ),
        (
            "5-part JWE",
            format!("{}.a.b.c.d", b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)),
            Reason::NotCompactJws,
        ),
        ("two parts", format!("{gh}.{gp}"), Reason::NotCompactJws),
        (
            "1 MiB token",
            format!("{gh}.{}.{gs}", "A".repeat(1 << 20)),
            Reason::TooLarge,
        ),
        (
            "crit header",
            ed(&ed_header_with(r#""crit":["exp"]"#), &body),
            Reason::HeaderField,
        ),
        (
            "jku header",
            ed(&ed_header_with(r#""jku":"https://evil.test/jwks""#), &body),
            Reason::HeaderField,
        ),
        (
            "x5u header",
            ed(&ed_header_with(r#""x5u":"https://evil.test/c.pem""#), &body),
            Reason::HeaderField,
        ),
        (
            "embedded jwk header",
            ed(&ed_header_with(r#""jwk":{"kty":"OKP"}"#), &body),
            Reason::HeaderField,
        ),
        (
            "typ JWE",
            ed(&ed_header_with(r#""typ":"JWE""#), &body),
            Reason::HeaderField,
        ),
        (
            "duplicate header alg",
            ed(r#"{"alg":"none","alg":"EdDSA","kid":"ed1"}"#, &body),
            Reason::DuplicateKey("header"),
        ),
        (
            "duplicate claim iss",
            ed(
                hdr,
                &body.replacen("{", r#"{"iss":"https://evil.test","#, 1),
            ),
            Reason::DuplicateKey("payload"),
        ),
        (
            "header not base64url",
            format!("!!.{gp}.{gs}"),
            Reason::Base64("header"),
        ),
        (
            "payload a JSON array",
            ed(hdr, "[1,2]"),
            Reason::NotJsonObject("payload"),
        ),
    ]
}

#[allow(clippy::too_many_lines)] // one row per hostile case reads best as one table
fn hostile_cases(k: &Keys) -> Vec<(&'static str, String, Reason)> {
    let body = claims().to_string();
    let ed = |h: &str, p: &str| raw(h, p, &k.ed, Algorithm::EdDSA);
    let hdr = r#"{"alg":"EdDSA","kid":"ed1"}"#;
    let mut cases = jws_cases(k, &body);
    cases.extend(vec![
        (
            "duplicate claim sub",
            ed(
                hdr,
                &body.replacen(
                    "{",
                    r#"{"sub":"system:serviceaccount:kube-system:admin","#,
                    1,
                ),
            ),
            Reason::DuplicateKey("payload"),
        ),
        (
            "expired",
            ed_token(
                &edit(|c| {
                    c["iat"] = json!(NOW - 700);
                    c["nbf"] = json!(NOW - 700);
                    c["exp"] = json!(NOW - 100);
                }),
                k,
            ),
            Reason::Expired,
        ),
        (
            "exp as string",
            ed_token(&edit(|c| c["exp"] = json!((NOW + 600).to_string())), k),
            Reason::ClaimType("exp"),
        ),
        (
            "exp 1e300",
            ed(
                hdr,
                &body.replace(&format!("\"exp\":{}", NOW + 600), "\"exp\":1e300"),
            ),
            Reason::ClaimType("exp"),
        ),
        (
            "exp fractional",
            ed_token(&edit(|c| c["exp"] = json!(NOW as f64 + 600.5)), k),
            Reason::ClaimType("exp"),
        ),
        (
            "exp negative",
            ed_token(&edit(|c| c["exp"] = json!(-1)), k),
            Reason::ClaimType("exp"),
        ),
        (
            "exp missing",
            ed_token(
                &edit(|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                k,
            ),
            Reason::MissingClaim("exp"),
        ),
        (
            "nbf in the future",
            ed_token(&edit(|c| c["nbf"] = json!(NOW + 31)), k),
            Reason::NotYetValid,
        ),
        (
            "nbf as string",
            ed_token(&edit(|c| c["nbf"] = json!(NOW.to_string())), k),
            Reason::ClaimType("nbf"),
        ),
        (
            "iat and nbf missing",
            ed_token(
                &edit(|c| {
                    let m = c.as_object_mut().unwrap();
                    m.remove("iat");
                    m.remove("nbf");
                }),
                k,
            ),
            Reason::MissingClaim("iat"),
        ),
        (
            "iat in the future",
            ed_token(&edit(|c| c["iat"] = json!(NOW + 31)), k),
            Reason::IssuedInFuture,
        ),
        (
            "lifetime over the cap",
            ed_token(&edit(|c| c["exp"] = json!(NOW + 3601)), k),
            Reason::Lifetime,
        ),
        (
            "exp before iat",
            ed_token(
                &edit(|c| {
                    c["iat"] = json!(NOW);
                    c["nbf"] = json!(NOW);
                    c["exp"] = json!(NOW);
                }),
                k,
            ),
            Reason::Lifetime,
        ),
        (
            "wrong aud",
            ed_token(&edit(|c| c["aud"] = json!("someone-else")), k),
            Reason::Audience,
        ),
        (
            "missing aud",
            ed_token(
                &edit(|c| {
                    c.as_object_mut().unwrap().remove("aud");
                }),
                k,
            ),
            Reason::MissingClaim("aud"),
        ),
        (
            "extra aud",
            ed_token(&edit(|c| c["aud"] = json!([AUD, "other"])), k),
            Reason::Audience,
        ),
        (
            "two configured auds",
            ed_token(&edit(|c| c["aud"] = json!([AUD, "keybroker-admin"])), k),
            Reason::Audience,
        ),
        (
            "aud as object",
            ed_token(&edit(|c| c["aud"] = json!({"a": AUD})), k),
            Reason::ClaimType("aud"),
        ),
        (
            "wrong iss",
            ed_token(&edit(|c| c["iss"] = json!("https://evil.test")), k),
            Reason::UnknownIssuer,
        ),
        (
            "missing iss",
            ed_token(
                &edit(|c| {
                    c.as_object_mut().unwrap().remove("iss");
                }),
                k,
            ),
            Reason::MissingClaim("iss"),
        ),
        (
            "iss as list",
            ed_token(&edit(|c| c["iss"] = json!([ISS])), k),
            Reason::ClaimType("iss"),
        ),
        (
            "sub as object",
            ed_token(&edit(|c| c["sub"] = json!({"id": "x"})), k),
            Reason::ClaimType("sub"),
        ),
        (
            "empty sub",
            ed_token(&edit(|c| c["sub"] = json!("")), k),
            Reason::MissingClaim("sub"),
        ),
        (
            "duplicate nested namespace",
            ed(
                hdr,
                &body.replace(
                    r#""namespace":"ml""#,
                    r#""namespace":"ml","namespace":"kube-system""#,
                ),
            ),
            Reason::DuplicateKey("payload"),
        ),
        (
            "kubernetes.io.namespace as list",
            ed_token(
                &edit(|c| c["kubernetes.io"]["namespace"] = json!(["ml", "kube-system"])),
                k,
            ),
            Reason::ClaimType("kubernetes.io.namespace"),
        ),
        (
            "kubernetes.io.serviceaccount as string",
            ed_token(
                &edit(|c| c["kubernetes.io"]["serviceaccount"] = json!("trainer")),
                k,
            ),
            Reason::ClaimType("kubernetes.io.serviceaccount"),
        ),
        (
            "kubernetes.io.pod.name as object",
            ed_token(
                &edit(|c| c["kubernetes.io"]["pod"]["name"] = json!({"x": 1})),
                k,
            ),
            Reason::ClaimType("kubernetes.io.pod"),
        ),
        (
            "kubernetes.io as string",
            ed_token(&edit(|c| c["kubernetes.io"] = json!("ml")), k),
            Reason::ClaimType("kubernetes.io"),
        ),
        (
            "sub disagrees with kubernetes.io",
            ed_token(
                &edit(|c| c["sub"] = json!("system:serviceaccount:kube-system:admin")),
                k,
            ),
            Reason::SubjectMismatch,
        ),
        (
            "job claim as list",
            ed_token(&edit(|c| c["job"] = json!(["job-1", "job-2"])), k),
            Reason::ClaimType("job"),
        ),
    ]);
    cases
}

#[test]
fn every_hostile_token_is_refused_for_its_specific_reason() {
    let k = keys();
    let cases = hostile_cases(&k);
    assert!(cases.len() >= 35, "only {} cases", cases.len());
    for (name, token, want) in &cases {
        let got = k.verifier.verify(token, NOW).map(|p| p.subject);
        assert_eq!(
            got.map_err(|e| e.reason()),
            Err(Some(*want)),
            "case: {name}"
        );
    }
}

#[test]
fn valid_rs256_ps256_es256_and_eddsa_tokens_pass() {
    let k = keys();
    let body = claims().to_string();
    for (header, key, alg) in [
        (
            r#"{"alg":"RS256","kid":"rsa1","typ":"JWT"}"#,
            &k.rsa,
            Algorithm::RS256,
        ),
        (
            r#"{"alg":"PS256","kid":"rsa-ps"}"#,
            &k.rsa,
            Algorithm::PS256,
        ),
        (r#"{"alg":"ES256","kid":"ec1"}"#, &k.ec, Algorithm::ES256),
        (r#"{"alg":"EdDSA","kid":"ed1"}"#, &k.ed, Algorithm::EdDSA),
    ] {
        let p = k
            .verifier
            .verify(&raw(header, &body, key, alg), NOW)
            .unwrap();
        assert_eq!(p.subject, "system:serviceaccount:ml:trainer", "{header}");
        assert_eq!(p.namespace.as_deref(), Some("ml"));
        assert_eq!(p.service_account.as_deref(), Some("trainer"));
        assert_eq!(p.pod.as_deref(), Some("p-1"));
        assert_eq!(p.job_id.as_deref(), Some("job-1"));
        assert_eq!(p.cluster.as_deref(), Some("train-a"));
        assert_eq!(p.region.as_deref(), Some("eu-west-1"));
        assert_eq!(p.jurisdiction.as_deref(), Some("EU"));
    }
}

#[test]
fn spiffe_jwt_svid_maps_subject_to_spiffe_id() {
    let k = keys();
    let c = json!({"iss": ISS, "sub": "spiffe://example.org/ns/ml/sa/trainer", "aud": [AUD],
                   "iat": NOW, "exp": NOW + 300});
    let p = k.verifier.verify(&ed_token(&c, &k), NOW).unwrap();
    assert_eq!(
        p.spiffe_id.as_deref(),
        Some("spiffe://example.org/ns/ml/sa/trainer")
    );
    assert_eq!(p.namespace, None);
    assert_eq!(p.job_id, None);
}

#[test]
fn leeway_edges_are_exact_to_the_second() {
    let k = keys();
    let at = |c: Value, now: u64| {
        k.verifier
            .verify(&ed_token(&c, &k), now)
            .map_err(|e| e.reason())
    };
    let exp = NOW + 600;
    // exp: valid while now < exp + 30.
    assert!(at(claims(), exp + 29).is_ok());
    assert_eq!(at(claims(), exp + 30), Err(Some(Reason::Expired)));
    // nbf and iat: up to 30 s in the future.
    let future = |field: &str, d: u64| edit(|c| c[field] = json!(NOW + d));
    assert!(at(future("nbf", 30), NOW).is_ok());
    assert_eq!(at(future("nbf", 31), NOW), Err(Some(Reason::NotYetValid)));
    assert!(
        at(
            edit(|c| {
                c["iat"] = json!(NOW + 30);
                c["nbf"] = json!(NOW + 30);
            }),
            NOW
        )
        .is_ok()
    );
    assert_eq!(
        at(future("iat", 31), NOW),
        Err(Some(Reason::IssuedInFuture))
    );
    // Lifetime: exactly the cap passes, one second more does not.
    assert!(at(edit(|c| c["exp"] = json!(NOW + 3600)), NOW).is_ok());
    assert_eq!(
        at(edit(|c| c["exp"] = json!(NOW + 3601)), NOW),
        Err(Some(Reason::Lifetime))
    );
}

#[test]
fn exp_not_after_iat_is_a_lifetime_error() {
    let k = keys();
    let c = edit(|c| {
        c["exp"] = json!(NOW);
    });
    // At NOW - 1 the token is not yet expired, but exp == iat is no lifetime at all.
    let got = k
        .verifier
        .verify(&ed_token(&c, &k), NOW - 1)
        .map_err(|e| e.reason());
    assert_eq!(got.map(|p| p.subject), Err(Some(Reason::Lifetime)));
}
