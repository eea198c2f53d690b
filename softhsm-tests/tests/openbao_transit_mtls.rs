//! The transit-compatible endpoint with client certificates: a real `bao` unseals through it
//! with an X.509-SVID and no token (`auth = "mtls"`), and calls without the right certificate
//! are refused — with a 403 and an audit record when the certificate is missing or not the one
//! bound to the token (`auth = "both"`), at the handshake when the certificate itself is bad.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keybroker_broker::config::{
    HttpConfig, IdentityMode, TransitAuth, TransitConfig, TransitToken,
};
use keybroker_client::{Client, ClientConfig, KeyPurpose};
use sha2::{Digest as _, Sha256};
use softhsm_tests::bao::Bao;
use softhsm_tests::broker::TestBroker;
use softhsm_tests::https::{Reply, request_as};
use softhsm_tests::svid::{SvidSpec, TestCa, mtls_config};

const SEAL_KEY: &str = "seal/bao-mtls";
const BAO_ID: &str = "spiffe://eu1.test/ns/openbao/sa/bao";
const OTHER_ID: &str = "spiffe://eu1.test/ns/ml/sa/trainer";
const TOKEN: &str = "kbt-mtls-test-0123456789abcdef";
/// In `mtls` mode only bao's SPIFFE ID may do anything.
const POLICY: &str = r#"
@id("bao-svid")
permit (principal, action, resource)
when { principal has spiffe_id && principal.spiffe_id == "spiffe://eu1.test/ns/openbao/sa/bao" };
"#;

/// A broker whose gRPC and transit surfaces both authenticate in `mode` / `auth`.
async fn broker(ca: &TestCa, mode: IdentityMode, auth: TransitAuth) -> TestBroker {
    let ca_pem = ca.pem.clone();
    TestBroker::start_with(move |c| {
        let dir = c.path.parent().unwrap().to_path_buf();
        let bundle = dir.join("client-ca.pem");
        std::fs::write(&bundle, ca_pem).unwrap();
        if mode == IdentityMode::Mtls {
            std::fs::write(c.policy.file.as_ref().unwrap(), POLICY).unwrap();
        }
        c.identity.mode = mode;
        c.identity.mtls = Some(mtls_config(bundle));
        let tokens = if auth == TransitAuth::Mtls {
            Vec::new()
        } else {
            vec![TransitToken {
                name: "bao".to_owned(),
                sha256: Sha256::digest(TOKEN.as_bytes()).into(),
                // The test policy lets namespace `dev` use every key.
                namespace: Some("dev".to_owned()),
                cluster: None,
                region: Some("eu-west-1".to_owned()),
                jurisdiction: Some("EU".to_owned()),
                spiffe_id: Some(BAO_ID.to_owned()),
            }]
        };
        c.http = Some(HttpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: true,
            transit: Some(TransitConfig {
                mount: "transit".to_owned(),
                auth,
                tokens,
            }),
            xks: None,
        });
    })
    .await
    .unwrap()
}

/// A gRPC client presenting `cert` (and, in `both` mode, a dev token).
async fn client(b: &TestBroker, cert: &(PathBuf, PathBuf), token: bool) -> Client {
    Client::connect(ClientConfig {
        ca: Some(b.ca()),
        cert: Some(cert.0.clone()),
        key: Some(cert.1.clone()),
        token_file: if token {
            Some(b.token_file().unwrap())
        } else {
            None
        },
        ..ClientConfig::new(b.endpoint.clone())
    })
    .await
    .unwrap()
}

/// `PUT /v1/transit/encrypt/<SEAL_KEY>` with `cert` and `token`, if given.
async fn encrypt(
    b: &TestBroker,
    cert: Option<&(PathBuf, PathBuf)>,
    token: Option<&str>,
) -> anyhow::Result<Reply> {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(t) = token {
        headers.push(("x-vault-token", t));
    }
    request_as(
        b.http_addr.unwrap(),
        &b.ca(),
        cert.map(|(c, k)| (c.as_path(), k.as_path())),
        "PUT",
        &format!("/v1/transit/encrypt/{SEAL_KEY}"),
        &headers,
        r#"{"plaintext":"c2VhbGVkIHJvb3Qga2V5"}"#,
    )
    .await
}

fn records(b: &TestBroker) -> Vec<serde_json::Value> {
    b.audit_records()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

fn mint(ca: &TestCa, dir: &Path, name: &str, id: &str) -> (PathBuf, PathBuf) {
    ca.mint(SvidSpec::new(id), dir, name).unwrap()
}

/// A CA, a broker in `mode`/`auth` trusting it, bao's certificate (in `pki`) and the SEAL key.
struct Setup {
    ca: TestCa,
    b: TestBroker,
    pki: tempfile::TempDir,
    bao_cert: (PathBuf, PathBuf),
}

async fn setup(mode: IdentityMode, auth: TransitAuth) -> Setup {
    let ca = TestCa::new().unwrap();
    let b = broker(&ca, mode, auth).await;
    let pki = tempfile::tempdir().unwrap();
    let bao_cert = mint(&ca, pki.path(), "bao", BAO_ID);
    client(&b, &bao_cert, mode == IdentityMode::Both)
        .await
        .create_key(SEAL_KEY, KeyPurpose::Seal, &BTreeMap::new(), None)
        .await
        .unwrap();
    Setup {
        ca,
        b,
        pki,
        bao_cert,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bao_auto_unseals_through_transit_with_a_client_certificate_and_no_token() {
    let Setup {
        b,
        pki: _pki,
        bao_cert,
        ..
    } = setup(IdentityMode::Mtls, TransitAuth::Mtls).await;

    let stanza = format!(
        "seal \"transit\" {{\n  address = \"https://localhost:{}\"\n  key_name = \"{SEAL_KEY}\"\n  \
         mount_path = \"transit/\"\n  tls_ca_cert = \"{}\"\n  tls_client_cert = \"{}\"\n  \
         tls_client_key = \"{}\"\n  tls_server_name = \"localhost\"\n}}\n",
        b.http_addr.unwrap().port(),
        b.ca().display(),
        bao_cert.0.display(),
        bao_cert.1.display(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut bao = Bao::start(dir.path(), &stanza).unwrap();
    let unsealed_after = tokio::task::block_in_place(|| {
        bao.init_unsealed().unwrap();
        bao.restart_unsealed().unwrap()
    });
    eprintln!("bao restart to unsealed through transit with mTLS: {unsealed_after:?}");
    let log = bao.log();
    tokio::task::block_in_place(|| bao.stop()).unwrap();

    let recs = records(&b);
    let transit: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["surface"] == "transit").collect();
    assert!(
        transit.iter().any(|r| r["op"] == "encrypt")
            && transit.iter().any(|r| r["op"] == "decrypt"),
        "bao wrapped and unwrapped through transit:\n{transit:#?}\n{log}"
    );
    for r in &transit {
        assert_eq!(r["principal"]["subject"], BAO_ID, "{r:#}");
        assert_eq!(r["principal"]["region"], "eu-west-1", "{r:#}");
        assert_eq!(r["decision"], "allow", "{r:#}\n{log}");
        assert!(
            r["principal"]["cert_fingerprint"]
                .as_str()
                .is_some_and(|f| f.len() == 64),
            "{r:#}"
        );
    }
}

#[tokio::test]
async fn transit_refuses_calls_without_the_right_client_certificate() {
    let Setup {
        ca,
        b,
        pki,
        bao_cert,
    } = setup(IdentityMode::Mtls, TransitAuth::Mtls).await;

    // A valid certificate works: the same endpoint, so every refusal below is about identity.
    let ok = encrypt(&b, Some(&bao_cert), None).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text);

    // No certificate (with or without a token): 403 with an errors body, and audited.
    let before = records(&b).len();
    for token in [None, Some(TOKEN)] {
        let r = encrypt(&b, None, token).await.unwrap();
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(
            r.json["errors"][0], "missing client certificate",
            "{}",
            r.text
        );
    }
    let refused: Vec<serde_json::Value> = records(&b)[before..].to_vec();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    for r in &refused {
        assert_eq!(
            (&r["surface"], &r["op"], &r["decision"], &r["reasons"][0]),
            (
                &serde_json::json!("transit"),
                &serde_json::json!("encrypt"),
                &serde_json::json!("deny"),
                &serde_json::json!("missing client certificate")
            ),
            "{r:#}"
        );
    }

    // Load balancers probe without a certificate: the probes still answer.
    let addr = b.http_addr.unwrap();
    let health = request_as(addr, &b.ca(), None, "GET", "/healthz", &[], "")
        .await
        .unwrap();
    assert_eq!(health.status, 200, "{}", health.text);

    // A certificate from another CA, or from an unlisted trust domain: the handshake fails,
    // no request reaches the endpoint.
    let stranger = TestCa::new().unwrap();
    let foreign = mint(&stranger, pki.path(), "foreign", BAO_ID);
    let other_domain = mint(&ca, pki.path(), "us", "spiffe://us.test/ns/openbao/sa/bao");
    let expired = ca
        .mint(
            SvidSpec {
                not_after: time::OffsetDateTime::now_utc() - time::Duration::minutes(5),
                ..SvidSpec::new(BAO_ID)
            },
            pki.path(),
            "expired",
        )
        .unwrap();
    let before = records(&b).len();
    for (what, cert) in [
        ("another CA", &foreign),
        ("unlisted trust domain", &other_domain),
        ("expired", &expired),
    ] {
        let r = encrypt(&b, Some(cert), None).await;
        assert!(r.is_err(), "{what}: {r:?}");
    }
    assert_eq!(
        records(&b).len(),
        before,
        "refused handshakes reach no handler"
    );

    // A valid certificate of another workload: authenticated, then denied by policy.
    let trainer = mint(&ca, pki.path(), "trainer", OTHER_ID);
    let r = encrypt(&b, Some(&trainer), None).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.text);
    let last = records(&b).pop().unwrap();
    assert_eq!(last["principal"]["subject"], OTHER_ID, "{last:#}");
    assert_eq!(last["decision"], "deny", "{last:#}");
}

#[tokio::test]
async fn both_mode_binds_the_token_to_its_certificate() {
    let Setup {
        ca,
        b,
        pki,
        bao_cert,
    } = setup(IdentityMode::Both, TransitAuth::Both).await;
    let trainer = mint(&ca, pki.path(), "trainer", OTHER_ID);

    let ok = encrypt(&b, Some(&bao_cert), Some(TOKEN)).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text);
    let last = records(&b).pop().unwrap();
    assert_eq!(last["principal"]["subject"], "transit:bao", "{last:#}");
    assert_eq!(last["principal"]["spiffe_id"], BAO_ID, "{last:#}");

    for (what, cert, token, message) in [
        (
            "token with another workload's certificate",
            Some(&trainer),
            Some(TOKEN),
            "client certificate is not the one bound to this token",
        ),
        (
            "token without a certificate",
            None,
            Some(TOKEN),
            "missing client certificate",
        ),
        (
            "certificate without a token",
            Some(&bao_cert),
            None,
            "missing or unknown X-Vault-Token",
        ),
        (
            "certificate with a wrong token",
            Some(&bao_cert),
            Some("kbt-wrong"),
            "missing or unknown X-Vault-Token",
        ),
    ] {
        let r = encrypt(&b, cert, token).await.unwrap();
        assert_eq!(r.status, 403, "{what}: {}", r.text);
        assert_eq!(r.json["errors"][0], message, "{what}");
        let last = records(&b).pop().unwrap();
        assert_eq!(last["reasons"][0], message, "{what}: {last:#}");
        assert_eq!(last["decision"], "deny", "{what}: {last:#}");
    }
    // Neither the token nor its hash is in any record.
    let all = b.audit_records().unwrap().join("\n");
    assert!(!all.contains(TOKEN));
    assert!(!all.contains(&hex::encode(Sha256::digest(TOKEN.as_bytes()))));
}
