//! Several `keybrokerd` processes on one SoftHSM token and one PostgreSQL database: the
//! production layout of DESIGN §10, for the multi-replica tests. Every replica shares the
//! config directory (issuer, TLS, policy, PIN file, `pg-url`) and has its own tiles directory
//! `audit-<name>` and `server.replica_id = "replica-<name>"`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use keybroker_client::{Client, ClientConfig};
use tempfile::TempDir;
use tokio::io::AsyncBufReadExt as _;

use crate::SoftHsmToken;
use crate::postgres::TestPostgres;

/// The shared pieces: database, token, config directory.
pub struct Cluster {
    /// The database (dropped last: replicas first).
    pub pg: TestPostgres,
    /// The token every replica logs in to.
    pub token: SoftHsmToken,
    /// Config, issuer, TLS, `pg-url`, tiles directories.
    pub dir: TempDir,
}

/// One `keybrokerd` process.
pub struct Replica {
    /// Its name (`a`, `b`, …).
    pub name: String,
    /// `https://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Its tiles directory.
    pub audit_dir: PathBuf,
    /// Set while its log says it signs the checkpoints.
    publisher: Arc<AtomicBool>,
    child: tokio::process::Child,
}

/// Follows a replica's log lines for the publisher role.
fn note_role(line: &str, publisher: &AtomicBool) {
    if line.contains("audit publisher: this replica signs checkpoints") {
        publisher.store(true, Ordering::SeqCst);
    } else if line.contains("audit publisher: lock session lost") {
        publisher.store(false, Ordering::SeqCst);
    }
}

impl Cluster {
    /// A fresh database, token and config directory.
    ///
    /// # Errors
    /// PostgreSQL missing or failing, token or config failures.
    pub fn new() -> anyhow::Result<Self> {
        let pg = TestPostgres::start()?;
        let token = SoftHsmToken::new("replicas")?;
        let dir = tempfile::tempdir()?;
        let base = crate::broker::write_config(dir.path(), &token, &token.pin)?;
        let text = std::fs::read_to_string(&base)?;
        // The single-node layout on the same token, for comparisons.
        std::fs::write(dir.path().join("broker-sqlite.toml"), &text)?;
        let text = text.replace(
            "[store]\nsqlite_path = \"catalog.db\"\n",
            "[store]\nkind = \"postgres\"\nurl_file = \"pg-url\"\nmax_connections = 8\n",
        );
        if !text.contains("kind = \"postgres\"") {
            bail!("the test config has no [store] section to replace");
        }
        std::fs::write(&base, text)?;
        std::fs::write(dir.path().join("pg-url"), pg.url())?;
        Ok(Self { pg, token, dir })
    }

    /// Starts replica `name` and waits until it serves.
    ///
    /// # Errors
    /// The process failed to start or did not report serving within 60 s.
    pub async fn start(&self, name: &str) -> anyhow::Result<Replica> {
        self.start_from(name, "broker.toml").await
    }

    /// Starts a single-node broker on SQLite (`catalog.db`) on the same token, for comparisons.
    ///
    /// # Errors
    /// As [`Cluster::start`].
    pub async fn start_sqlite(&self, name: &str) -> anyhow::Result<Replica> {
        self.start_from(name, "broker-sqlite.toml").await
    }

    async fn start_from(&self, name: &str, base: &str) -> anyhow::Result<Replica> {
        let config = self.dir.path().join(format!("broker-{name}.toml"));
        let text = std::fs::read_to_string(self.dir.path().join(base))?;
        // Each replica names itself in the audit records it writes.
        let text = text.replacen(
            "[server]\n",
            &format!("[server]\nreplica_id = \"replica-{name}\"\n"),
            1,
        );
        std::fs::write(
            &config,
            format!("{text}\n[audit]\ndir = \"audit-{name}\"\n"),
        )?;
        let mut child = tokio::process::Command::new(crate::workspace_bin("keybrokerd")?)
            .arg("--config")
            .arg(&config)
            .arg("--allow-root") // CI runs as root
            .env(
                "KEYBROKER_LOG",
                std::env::var("KEYBROKER_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let publisher = Arc::new(AtomicBool::new(false));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut seen: Vec<String> = Vec::new();
        let port = loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .context("replica did not report serving within 60 s")??;
            let Some(line) = line else {
                bail!(
                    "replica exited before serving; its log:\n{}",
                    seen.join("\n")
                );
            };
            seen.push(line.clone());
            if std::env::var_os("KEYBROKER_LOG").is_some() {
                eprintln!("[{name}] {line}");
            }
            note_role(&line, &publisher);
            if line.contains("serving")
                && let Some(port) = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.rsplit(':').next())
            {
                break port.trim_matches('"').to_owned();
            }
        };
        // Keep draining its log so the pipe never fills.
        let tag = name.to_owned();
        let role = publisher.clone();
        tokio::spawn(async move {
            let echo = std::env::var_os("KEYBROKER_LOG").is_some();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[{tag}] {line}");
                }
                note_role(&line, &role);
            }
        });
        Ok(Replica {
            name: name.to_owned(),
            endpoint: format!("https://127.0.0.1:{port}"),
            audit_dir: self.dir.path().join(format!("audit-{name}")),
            publisher,
            child,
        })
    }

    /// A client of `replica` with a fresh token.
    ///
    /// # Errors
    /// Token or connection failures.
    pub async fn client(&self, replica: &Replica) -> anyhow::Result<Client> {
        client_for(self.dir.path(), &replica.endpoint).await
    }
}

/// A client of `endpoint` with a fresh token of the issuer in `dir`.
///
/// # Errors
/// Token or connection failures.
pub async fn client_for(dir: &Path, endpoint: &str) -> anyhow::Result<Client> {
    let token = dir.join(format!(
        "token-{}",
        endpoint.rsplit(':').next().unwrap_or("x")
    ));
    let t = keybroker_client::dev_token::mint(dir, Duration::from_secs(3600))?;
    keybroker_client::dev_token::write_token_file(&token, &t)?;
    Client::connect(ClientConfig {
        ca: Some(dir.join("tls/ca.pem")),
        token_file: Some(token),
        ..ClientConfig::new(endpoint.to_owned())
    })
    .await
    .context("connect")
}

impl Replica {
    /// `kill -9`: no drain, no final checkpoint.
    ///
    /// # Errors
    /// The process could not be killed.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// True when this replica is the checkpoint publisher (its log says so).
    #[must_use]
    pub fn is_publisher(&self) -> bool {
        self.publisher.load(Ordering::SeqCst)
    }
}
