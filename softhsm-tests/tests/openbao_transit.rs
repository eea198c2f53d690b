//! Vault/OpenBao auto-unseal through the transit-compatible endpoint, against a real `bao`
//! server: init, restart and auto-unseal, seal-key rotation with re-wrap, every call audited;
//! and the endpoint's answers to hostile requests (4xx for the caller's mistakes, 5xx only when
//! a retry can help).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::time::Duration;

use keybroker_broker::config::{HttpConfig, TransitAuth, TransitConfig, TransitToken};
use keybroker_client::KeyPurpose;
use sha2::{Digest as _, Sha256};
use softhsm_tests::bao::Bao;
use softhsm_tests::broker::TestBroker;
use softhsm_tests::https::{Reply, request};

const TOKEN: &str = "kbt-test-0123456789abcdef";
const SEAL_KEY: &str = "seal/bao-test";

async fn broker() -> TestBroker {
    TestBroker::start_with(|c| {
        c.http = Some(HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: true,
            transit: Some(TransitConfig {
                mount: "transit".to_owned(),
                auth: TransitAuth::Token,
                tokens: vec![TransitToken {
                    name: "bao".to_owned(),
                    sha256: Sha256::digest(TOKEN.as_bytes()).into(),
                    // The test policy lets namespace `dev` use every key.
                    namespace: Some("dev".to_owned()),
                    cluster: None,
                    region: Some("test-1".to_owned()),
                    jurisdiction: Some("EU".to_owned()),
                    spiffe_id: None,
                }],
            }),
            xks: None,
        });
    })
    .await
    .unwrap()
}

async fn put(b: &TestBroker, path: &str, token: Option<&str>, body: &str) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(t) = token {
        headers.push(("x-vault-token", t));
    }
    request(b.http_addr.unwrap(), &b.ca(), "PUT", path, &headers, body)
        .await
        .unwrap()
}

fn records(b: &TestBroker) -> Vec<serde_json::Value> {
    b.audit_records()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

/// A real bao whose `seal "transit"` points at `b`'s side port, with the test token.
fn start_bao(b: &TestBroker, dir: &std::path::Path) -> Bao {
    let stanza = format!(
        "seal \"transit\" {{\n  address = \"https://localhost:{}\"\n  token = \"{TOKEN}\"\n  \
         key_name = \"{SEAL_KEY}\"\n  mount_path = \"transit/\"\n  tls_ca_cert = \"{}\"\n  \
         tls_server_name = \"localhost\"\n}}\n",
        b.http_addr.unwrap().port(),
        b.ca().display()
    );
    Bao::start(dir, &stanza).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bao_auto_unseals_through_transit_and_rewraps_after_rotation() {
    let b = broker().await;
    let c = b.client().await.unwrap();
    c.create_key(SEAL_KEY, KeyPurpose::Seal, &BTreeMap::new(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bao = start_bao(&b, dir.path());
    let unsealed_after = tokio::task::block_in_place(|| {
        // Up and sealed (not initialized), then init: an auto-unseal bao unseals itself.
        bao.init_unsealed().unwrap();
        // Restart: auto-unseal through keybroker.
        bao.restart_unsealed().unwrap()
    });
    eprintln!("bao restart to unsealed through transit: {unsealed_after:?}");

    // Rotate the seal key; after a restart bao learns the new key id (v2) and re-wraps.
    c.rotate_key(SEAL_KEY).await.unwrap();
    tokio::task::block_in_place(|| bao.restart_unsealed()).unwrap();
    let log = bao.log();
    tokio::task::block_in_place(|| bao.stop()).unwrap();

    let recs = records(&b);
    let transit: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["surface"] == "transit").collect();
    assert!(
        transit
            .iter()
            .all(|r| r["principal"]["subject"] == "transit:bao"
                && r["key_name"] == SEAL_KEY
                && r["decision"] == "allow"
                && r["outcome"]["code"] == "ok"
                && r["principal"]["region"] == "test-1"),
        "{transit:#?}\n{log}"
    );
    let count = |op: &str, v: u32| {
        transit
            .iter()
            .filter(|r| r["op"] == op && r["key_version"] == v)
            .count()
    };
    assert!(count("encrypt", 1) >= 1, "init wraps under v1");
    assert!(
        count("decrypt", 1) >= 2,
        "each unseal opens the v1 root key"
    );
    assert!(
        count("encrypt", 2) >= 1,
        "after rotation bao re-wraps under v2:\n{log}"
    );
    // Neither the token nor its hash is in any record.
    let all = b.audit_records().unwrap().join("\n");
    assert!(!all.contains(TOKEN));
    assert!(!all.contains(&hex::encode(Sha256::digest(TOKEN.as_bytes()))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disabled_seal_key_keeps_bao_sealed_until_it_is_enabled() {
    let b = broker().await;
    let c = b.client().await.unwrap();
    c.create_key(SEAL_KEY, KeyPurpose::Seal, &BTreeMap::new(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bao = start_bao(&b, dir.path());
    tokio::task::block_in_place(|| {
        bao.init_unsealed().unwrap();
        bao.stop().unwrap();
    });
    let before = records(&b).len();

    // Disabled: bao's next start reaches keybroker and is refused; it must not unseal.
    c.disable_key(SEAL_KEY, 0).await.unwrap();
    tokio::task::block_in_place(|| bao.restart()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let refused = records(&b)[before..]
            .iter()
            .any(|r| r["surface"] == "transit" && r["outcome"]["code"] == "failed_precondition");
        let sealed = tokio::task::block_in_place(|| bao.sealed()).unwrap();
        assert_ne!(sealed, Some(false), "bao unsealed with a disabled seal key");
        if refused {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bao never asked keybroker:\n{}",
            bao.log()
        );
        tokio::task::yield_now().await;
    }
    let exited = tokio::task::block_in_place(|| bao.exited()).unwrap();
    eprintln!("with the seal key disabled, bao {exited:?} (None: running, sealed)");

    // Enabled again: bao unseals (a bao that gave up at start is started again, as a
    // supervisor would).
    c.enable_key(SEAL_KEY, 0).await.unwrap();
    tokio::task::block_in_place(|| {
        if bao.exited().unwrap().is_some() {
            bao.restart().unwrap();
        }
        bao.wait_sealed(false, Duration::from_secs(60)).unwrap();
        bao.stop().unwrap();
    });
}

#[tokio::test]
async fn transit_answers_hostile_requests_with_4xx_and_an_errors_body() {
    let b = broker().await;
    let c = b.client().await.unwrap();
    c.create_key(SEAL_KEY, KeyPurpose::Seal, &BTreeMap::new(), None)
        .await
        .unwrap();
    c.create_key(
        "datasets/not-seal",
        KeyPurpose::DataKey,
        &BTreeMap::new(),
        None,
    )
    .await
    .unwrap();
    let enc = format!("/v1/transit/encrypt/{SEAL_KEY}");
    let dec = format!("/v1/transit/decrypt/{SEAL_KEY}");
    let ok = put(&b, &enc, Some(TOKEN), r#"{"plaintext":"aGVsbG8="}"#).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let ct = ok.json["data"]["ciphertext"].as_str().unwrap().to_owned();
    assert!(ct.starts_with("vault:v1:"), "{ct}");
    let back = put(
        &b,
        &dec,
        Some(TOKEN),
        &format!(r#"{{"ciphertext":"{ct}"}}"#),
    )
    .await;
    assert_eq!(back.json["data"]["plaintext"], "aGVsbG8=", "{back:?}");
    let b64 = ct.trim_start_matches("vault:v1:");

    let cases: Vec<(&str, String, Option<&str>, String, u16)> = vec![
        (
            "no token",
            enc.clone(),
            None,
            r#"{"plaintext":"aGk="}"#.into(),
            403,
        ),
        (
            "wrong token",
            enc.clone(),
            Some("kbt-wrong"),
            r#"{"plaintext":"aGk="}"#.into(),
            403,
        ),
        (
            "data key, not a seal key",
            "/v1/transit/encrypt/datasets/not-seal".into(),
            Some(TOKEN),
            r#"{"plaintext":"aGk="}"#.into(),
            400,
        ),
        (
            "unknown key",
            "/v1/transit/encrypt/seal/nope".into(),
            Some(TOKEN),
            r#"{"plaintext":"aGk="}"#.into(),
            403,
        ),
        (
            "bad key name",
            "/v1/transit/encrypt/Seal/UPPER".into(),
            Some(TOKEN),
            r#"{"plaintext":"aGk="}"#.into(),
            400,
        ),
        (
            "plaintext not base64",
            enc.clone(),
            Some(TOKEN),
            r#"{"plaintext":"***"}"#.into(),
            400,
        ),
        (
            "body not JSON",
            enc.clone(),
            Some(TOKEN),
            "plaintext=aGk=".into(),
            400,
        ),
        (
            "plaintext a number",
            enc.clone(),
            Some(TOKEN),
            r#"{"plaintext":5}"#.into(),
            400,
        ),
        (
            "two parts",
            dec.clone(),
            Some(TOKEN),
            format!(r#"{{"ciphertext":"vault:{b64}"}}"#),
            400,
        ),
        (
            "bad base64",
            dec.clone(),
            Some(TOKEN),
            r#"{"ciphertext":"vault:v1:@@@"}"#.into(),
            400,
        ),
        (
            "unknown version",
            dec.clone(),
            Some(TOKEN),
            format!(r#"{{"ciphertext":"vault:v7:{b64}"}}"#),
            400,
        ),
        (
            "other mount",
            "/v1/other/encrypt/seal/bao-test".into(),
            Some(TOKEN),
            r#"{"plaintext":"aGk="}"#.into(),
            404,
        ),
        (
            "unknown op",
            format!("/v1/transit/rewrap/{SEAL_KEY}"),
            Some(TOKEN),
            "{}".into(),
            404,
        ),
        (
            "oversized body",
            enc.clone(),
            Some(TOKEN),
            format!(r#"{{"plaintext":"{}"}}"#, "A".repeat(200_000)),
            413,
        ),
    ];
    for (what, path, token, body, want) in cases {
        let r = put(&b, &path, token, &body).await;
        assert_eq!(r.status, want, "{what}: {r:?}");
        if want != 413 {
            assert!(
                r.json["errors"].as_array().is_some_and(|e| !e.is_empty()),
                "{what}: {r:?}"
            );
        }
    }
    // A tampered envelope (flipped tag byte) is refused, not opened.
    let mut env = base64_decode(b64);
    let last = env.len() - 1;
    env[last] ^= 1;
    let tampered = format!(r#"{{"ciphertext":"vault:v1:{}"}}"#, base64_encode(&env));
    let r = put(&b, &dec, Some(TOKEN), &tampered).await;
    assert!(r.status == 400 || r.status == 403, "{r:?}");
    assert!(r.json["data"].is_null());

    // renew-self: a valid token gets a lease, a wrong one 403 (bao stops renewing harmlessly).
    let renew = put(
        &b,
        "/v1/auth/token/renew-self",
        Some(TOKEN),
        r#"{"increment":0}"#,
    )
    .await;
    assert_eq!(renew.status, 200);
    assert!(renew.json["auth"]["lease_duration"].as_u64().unwrap() > 0);
    let renew = put(&b, "/v1/auth/token/renew-self", Some("nope"), "{}").await;
    assert_eq!(renew.status, 403);

    // HSM gone: 503, retryable; back: works again.
    b.token.unplug().unwrap();
    let down = put(&b, &enc, Some(TOKEN), r#"{"plaintext":"aGk="}"#).await;
    assert_eq!(down.status, 503, "{down:?}");
    b.token.plug_in().unwrap();
    let mut recovered = None;
    for _ in 0..50 {
        let r = put(&b, &enc, Some(TOKEN), r#"{"plaintext":"aGk="}"#).await;
        if r.status == 200 {
            recovered = Some(r);
            break;
        }
        assert_eq!(r.status, 503, "{r:?}");
    }
    assert!(
        recovered.is_some(),
        "the HSM came back but transit did not recover"
    );

    // Refusals are audited as transit calls, with no token in them.
    let recs = records(&b);
    assert!(
        recs.iter()
            .any(|r| r["surface"] == "transit" && r["decision"] == "deny")
    );
    let all = b.audit_records().unwrap().join("\n");
    assert!(!all.contains(TOKEN) && !all.contains("kbt-wrong"));
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// `bao write PATH ARGS…` as a client of `b`'s side port (the real CLI: Go's HTTP/2 client,
/// bao's own error handling): exit code and everything it printed.
fn bao_write(b: &TestBroker, args: &[&str]) -> (i32, String) {
    let addr = format!("https://localhost:{}", b.http_addr.unwrap().port());
    let out = std::process::Command::new(softhsm_tests::bao::bao_bin())
        .arg("write")
        .args(args)
        .env("BAO_ADDR", &addr)
        .env("VAULT_ADDR", &addr)
        .env("BAO_CACERT", b.ca())
        .env("VAULT_CACERT", b.ca())
        .env("BAO_TOKEN", TOKEN)
        .env("VAULT_TOKEN", TOKEN)
        .env("BAO_MAX_RETRIES", "0")
        .env("VAULT_MAX_RETRIES", "0")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_before_the_hsm_are_audited_for_a_real_bao_client() {
    let b = broker().await;
    let c = b.client().await.unwrap();
    for k in [SEAL_KEY, "seal/acc-second"] {
        c.create_key(k, KeyPurpose::Seal, &BTreeMap::new(), None)
            .await
            .unwrap();
    }
    let (code, out) = tokio::task::block_in_place(|| {
        bao_write(
            &b,
            &[&format!("transit/encrypt/{SEAL_KEY}"), "plaintext=aGVsbG8="],
        )
    });
    assert_eq!(code, 0, "{out}");
    let theirs = out
        .split_whitespace()
        .find(|w| w.starts_with("vault:v1:"))
        .unwrap()
        .to_owned();
    let before = records(&b).len();
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), "A".repeat(200 * 1024)).unwrap();
    let big_arg = format!("plaintext=@{}", big.path().display());
    let cases: Vec<(&str, Vec<String>, &str, &str)> = vec![
        (
            "not an envelope (the hostile review's example)",
            vec![
                "transit/decrypt/seal/acc-second".into(),
                "ciphertext=vault:v1:S0IBbm90LWEtY2lwaGVydGV4dA==".into(),
            ],
            "Code: 400",
            "invalid_argument",
        ),
        (
            "another key's ciphertext",
            vec![
                "transit/decrypt/seal/acc-second".into(),
                format!("ciphertext={theirs}"),
            ],
            "Code: 400",
            "invalid_argument",
        ),
        (
            "wrong version prefix",
            vec![
                format!("transit/decrypt/{SEAL_KEY}"),
                format!("ciphertext={}", theirs.replace("vault:v1:", "vault:v2:")),
            ],
            "Code: 400",
            "invalid_argument",
        ),
        (
            "plaintext not base64",
            vec![
                format!("transit/encrypt/{SEAL_KEY}"),
                "plaintext=***".into(),
            ],
            "Code: 400",
            "invalid_argument",
        ),
        (
            "a 200 KiB body (HTTP/2)",
            vec![format!("transit/encrypt/{SEAL_KEY}"), big_arg.clone()],
            "Code: 413",
            "resource_exhausted",
        ),
    ];
    for (what, args, want, outcome) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out) = tokio::task::block_in_place(|| bao_write(&b, &args));
        assert_ne!(code, 0, "{what}: {out}");
        assert!(out.contains(want), "{what}: want {want}:\n{out}");
        if *want == "Code: 413" {
            // The documented JSON error, not a stream reset or a text/plain body.
            assert!(
                out.contains("request body larger than 128 KiB"),
                "{what}:\n{out}"
            );
        }
        let recs = records(&b);
        let last = recs.last().unwrap();
        assert!(
            recs.len() > before
                && last["surface"] == "transit"
                && last["decision"] == "deny"
                && last["outcome"]["code"] == *outcome
                && last["principal"]["subject"] == "transit:bao",
            "{what}: no refusal record; last is {last:#}"
        );
    }
    assert_eq!(
        records(&b).len(),
        before + cases.len(),
        "one record per refusal"
    );
    let acc = &records(&b)[before];
    assert_eq!(acc["key_name"], "seal/acc-second", "{acc:#}");
    assert_eq!(acc["op"], "decrypt");
}

#[tokio::test]
async fn an_oversized_body_gets_the_json_413_on_http_1_and_is_audited() {
    let b = broker().await;
    let before = records(&b).len();
    let body = format!(r#"{{"plaintext":"{}"}}"#, "A".repeat(200_000));
    let r = put(
        &b,
        &format!("/v1/transit/encrypt/{SEAL_KEY}"),
        Some(TOKEN),
        &body,
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(
        r.json["errors"][0], "request body larger than 128 KiB",
        "{r:?}"
    );
    let recs = records(&b);
    assert_eq!(recs.len(), before + 1);
    let rec = recs.last().unwrap();
    assert_eq!(rec["outcome"]["code"], "resource_exhausted", "{rec:#}");
    assert_eq!(rec["key_name"], SEAL_KEY);
    // Unauthenticated and oversized: refused for who it is, and recorded as such.
    let r = put(&b, &format!("/v1/transit/encrypt/{SEAL_KEY}"), None, &body).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(
        records(&b).last().unwrap()["outcome"]["code"],
        "unauthenticated"
    );
}
