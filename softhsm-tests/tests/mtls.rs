//! mTLS end to end: a broker in `mode = "mtls"` with a client CA minted at test time, driven by
//! the real client presenting X.509-SVIDs. Hostile certificates fail the TLS handshake (no
//! request reaches the API, so no audit record); a valid SVID is served and its SPIFFE ID and
//! fingerprint land in the audit record; the CA bundle of a running `keybrokerd` rotates on
//! SIGHUP without a restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keybroker_broker::config::IdentityMode;
use keybroker_client::{Client, ClientConfig, ClientError, KeyPurpose};
use rcgen::KeyUsagePurpose;
use softhsm_tests::broker::TestBroker;
use softhsm_tests::svid::{SvidSpec, TestCa};
use time::OffsetDateTime;
use tonic::Code;

const ID: &str = "spiffe://eu1.test/ns/ml/sa/trainer";
const KEY: &str = "datasets/mtls";

const POLICY: &str = r#"
@id("trainer-svid")
permit (principal, action, resource)
when { principal.spiffe_id == "spiffe://eu1.test/ns/ml/sa/trainer" };
"#;

async fn broker(ca: &TestCa) -> TestBroker {
    broker_in(ca, IdentityMode::Mtls).await
}

async fn broker_in(ca: &TestCa, mode: IdentityMode) -> TestBroker {
    let ca_pem = ca.pem.clone();
    TestBroker::start_with(move |c| {
        let dir = c.path.parent().unwrap().to_path_buf();
        let bundle = dir.join("client-ca.pem");
        std::fs::write(&bundle, ca_pem).unwrap();
        if mode == IdentityMode::Mtls {
            std::fs::write(c.policy.file.as_ref().unwrap(), POLICY).unwrap();
        }
        c.identity.mode = mode;
        c.identity.mtls = Some(softhsm_tests::svid::mtls_config(bundle));
    })
    .await
    .unwrap()
}

async fn client(b: &TestBroker, cert: &(PathBuf, PathBuf)) -> Result<Client, ClientError> {
    Client::connect(ClientConfig {
        ca: Some(b.ca()),
        cert: Some(cert.0.clone()),
        key: Some(cert.1.clone()),
        token_file: None,
        ..ClientConfig::new(b.endpoint.clone())
    })
    .await
}

async fn create(c: &Client) -> Result<(), ClientError> {
    match c
        .create_key(KEY, KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
    {
        Ok(_) => Ok(()),
        Err(ClientError::Status {
            code: Code::AlreadyExists,
            ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One call with `cert`: Ok, or the error the client saw.
async fn call(b: &TestBroker, cert: &(PathBuf, PathBuf)) -> Result<(), ClientError> {
    let c = client(b, cert).await?;
    create(&c).await
}

fn mint(
    ca: &TestCa,
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut SvidSpec),
) -> (PathBuf, PathBuf) {
    let mut spec = SvidSpec::new(ID);
    edit(&mut spec);
    ca.mint(spec, dir, name).unwrap()
}

/// A refused handshake: the client never gets a gRPC status from the broker's API, only a
/// transport failure (reported as UNAVAILABLE, UNKNOWN, INTERNAL or CANCELLED depending on
/// when the TLS 1.3 alert reaches the HTTP/2 connection).
fn assert_handshake_refused(what: &str, r: Result<(), ClientError>) {
    match r {
        Ok(()) => panic!("{what}: accepted"),
        Err(ClientError::Status { code, .. }) => assert!(
            matches!(
                code,
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{what}: expected a transport failure, got {code:?}"
        ),
        Err(_) => {}
    }
}

#[tokio::test]
async fn hostile_client_certificates_fail_the_handshake_and_a_valid_svid_is_served() {
    let ca = TestCa::new().unwrap();
    let b = broker(&ca).await;
    let d = b.dir.path();
    let other_ca = TestCa::new().unwrap();
    let now = OffsetDateTime::now_utc();
    let hostile = [
        (
            "expired SVID",
            mint(&ca, d, "expired", |s| {
                s.not_before = now - time::Duration::days(2);
                s.not_after = now - time::Duration::days(1);
            }),
        ),
        (
            "foreign trust domain",
            mint(&ca, d, "foreign", |s| {
                s.uris = vec!["spiffe://us1.test/ns/ml/sa/trainer".into()];
            }),
        ),
        (
            "two URI SANs",
            mint(&ca, d, "two", |s| {
                s.uris.push("spiffe://eu1.test/ns/ml/sa/other".into());
            }),
        ),
        (
            "CA certificate as leaf",
            mint(&ca, d, "ca-leaf", |s| {
                s.is_ca = true;
                s.key_usages.push(KeyUsagePurpose::KeyCertSign);
            }),
        ),
        (
            "keyCertSign on leaf",
            mint(&ca, d, "certsign", |s| {
                s.key_usages.push(KeyUsagePurpose::KeyCertSign);
            }),
        ),
        ("wrong CA", mint(&other_ca, d, "wrong-ca", |_| {})),
    ];
    for (what, cert) in &hostile {
        assert_handshake_refused(what, call(&b, cert).await);
    }
    // No client certificate at all (and no token).
    let bare = Client::connect(ClientConfig {
        ca: Some(b.ca()),
        ..ClientConfig::new(b.endpoint.clone())
    })
    .await;
    let r = match bare {
        Ok(c) => create(&c).await,
        Err(e) => Err(e),
    };
    assert_handshake_refused("no client certificate", r);
    // Nothing reached the API.
    assert!(b.audit_records().unwrap().is_empty());

    let good = mint(&ca, d, "good", |_| {});
    call(&b, &good).await.unwrap();
    let c = client(&b, &good).await.unwrap();
    let ctx = BTreeMap::from([("dataset".to_owned(), "x".to_owned())]);
    c.generate_data_key(KEY, &ctx, None).await.unwrap();
    let pem = std::fs::read_to_string(&good.0).unwrap();
    let der = rustls_der(&pem);
    let fp = keybroker_broker::identity::fingerprint(&der);
    let records = b.audit_records().unwrap();
    assert_eq!(records.len(), 2);
    for r in &records {
        let v: serde_json::Value = serde_json::from_str(r).unwrap();
        assert_eq!(v["principal"]["spiffe_id"], ID, "{r}");
        assert_eq!(v["principal"]["subject"], ID, "{r}");
        assert_eq!(v["principal"]["cert_fingerprint"], fp.as_str(), "{r}");
        assert_eq!(v["outcome"]["code"], "ok", "{r}");
    }

    // The CLI presents the same SVID with --cert/--key (and needs no token).
    let cli = |cert: Option<&(PathBuf, PathBuf)>| {
        let mut cmd = tokio::process::Command::new(bin("keybroker"));
        cmd.args(["--endpoint", &b.endpoint, "--ca"])
            .arg(b.ca())
            .args(["--output", "json", "keys", "get", KEY])
            .env_remove("KEYBROKER_TOKEN_FILE")
            .env_remove("KEYBROKER_CERT")
            .env_remove("KEYBROKER_KEY");
        if let Some((c, k)) = cert {
            cmd.arg("--cert").arg(c).arg("--key").arg(k);
        } else {
            cmd.arg("--token-file")
                .arg(b.dir.path().join("no-such-token"));
        }
        cmd.output()
    };
    let out = cli(Some(&good)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(key["name"], KEY);
    assert!(!cli(None).await.unwrap().status.success());
    b.stop().await.unwrap();
}

fn bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} not built (cargo build --workspace --bins)",
        path.display()
    );
    path
}

#[tokio::test]
async fn both_mode_needs_token_and_certificate_and_records_both() {
    let ca = TestCa::new().unwrap();
    let b = broker_in(&ca, IdentityMode::Both).await;
    let good = mint(&ca, b.dir.path(), "good", |_| {});
    // Certificate without token: authenticated TLS, refused call.
    match call(&b, &good).await {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, Code::Unauthenticated);
            assert!(message.starts_with("missing bearer token"), "{message}");
        }
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
    // Token without certificate: the handshake fails.
    assert_handshake_refused("token only", create(&b.client().await.unwrap()).await);
    // Both: the dev token's principal, plus the certificate's SPIFFE ID and fingerprint.
    let c = Client::connect(ClientConfig {
        ca: Some(b.ca()),
        cert: Some(good.0.clone()),
        key: Some(good.1.clone()),
        token_file: Some(b.token_file().unwrap()),
        ..ClientConfig::new(b.endpoint.clone())
    })
    .await
    .unwrap();
    create(&c).await.unwrap();
    let fp = keybroker_broker::identity::fingerprint(&rustls_der(
        &std::fs::read_to_string(&good.0).unwrap(),
    ));
    let last: serde_json::Value =
        serde_json::from_str(b.audit_records().unwrap().last().unwrap()).unwrap();
    assert_eq!(last["outcome"]["code"], "ok");
    assert_eq!(last["principal"]["namespace"], "dev");
    assert_eq!(last["principal"]["spiffe_id"], ID);
    assert_eq!(last["principal"]["cert_fingerprint"], fp.as_str());
    b.stop().await.unwrap();
}

fn rustls_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// `keybrokerd --config` as a child process in mTLS mode, its log lines on a channel.
struct Daemon {
    child: tokio::process::Child,
    endpoint: String,
    log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Daemon {
    async fn start(dir: &Path, token: &softhsm_tests::SoftHsmToken, ca: &TestCa) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let config = softhsm_tests::broker::write_config(dir, token, &token.pin).unwrap();
        std::fs::write(dir.join("client-ca.pem"), &ca.pem).unwrap();
        std::fs::write(dir.join("dev-policy.cedar"), POLICY).unwrap();
        let mut text = std::fs::read_to_string(&config).unwrap();
        // Poll hourly: the rotation below must be SIGHUP's doing.
        text.push_str(
            "\n[identity]\nmode = \"mtls\"\nclient_ca_file = \"client-ca.pem\"\n\
             client_ca_poll_interval = \"1h\"\n\
             trust_domains = [{ domain = \"eu1.test\", region = \"eu-west-1\" }]\n",
        );
        std::fs::write(&config, text).unwrap();
        let mut child = tokio::process::Command::new(bin("keybrokerd"))
            .arg("--config")
            .arg(&config)
            .env("KEYBROKER_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, mut log) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(strip_ansi(&line));
            }
        });
        let serving = wait_for(&mut log, "serving").await;
        let addr = serving
            .split("addr=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        let port = addr.rsplit(':').next().unwrap();
        Self {
            child,
            endpoint: format!("https://127.0.0.1:{port}"),
            log,
        }
    }

    async fn call(&self, dir: &Path, cert: &(PathBuf, PathBuf)) -> Result<(), ClientError> {
        let c = Client::connect(ClientConfig {
            ca: Some(dir.join("tls/ca.pem")),
            cert: Some(cert.0.clone()),
            key: Some(cert.1.clone()),
            ..ClientConfig::new(self.endpoint.clone())
        })
        .await?;
        c.list_all_keys("").await.map(|_| ())
    }
}

/// Waits (bounded) for a log line containing `needle`.
async fn wait_for(log: &mut tokio::sync::mpsc::UnboundedReceiver<String>, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, log.recv()).await {
            Ok(Some(line)) if line.contains(needle) => return line,
            Ok(Some(_)) => {}
            other => panic!("no log line with {needle:?} within 30 s: {other:?}"),
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn client_ca_rotates_on_sighup_to_keybrokerd_without_restart() {
    let token = softhsm_tests::SoftHsmToken::new("e2e-mtls").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (old, new) = (TestCa::new().unwrap(), TestCa::new().unwrap());
    let mut daemon = Daemon::start(d, &token, &old).await;
    let from_old = mint(&old, d, "old", |_| {});
    let from_new = mint(&new, d, "new", |_| {});
    daemon.call(d, &from_old).await.unwrap();
    assert_handshake_refused("new CA before rotation", daemon.call(d, &from_new).await);

    // A broken bundle is refused on SIGHUP and the old one stays.
    std::fs::write(d.join("client-ca.pem"), "not a bundle").unwrap();
    let pid = daemon.child.id().unwrap().to_string();
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
    };
    assert!(hup().unwrap().success());
    wait_for(&mut daemon.log, "client CA bundle not reloaded").await;
    daemon.call(d, &from_old).await.unwrap();

    std::fs::write(d.join("client-ca.pem"), &new.pem).unwrap();
    assert!(hup().unwrap().success());
    wait_for(&mut daemon.log, "client CA bundle reloaded").await;
    daemon.call(d, &from_new).await.unwrap();
    assert_handshake_refused("old CA after rotation", daemon.call(d, &from_old).await);
    daemon.child.kill().await.unwrap();
}
