//! A real broker for end-to-end tests: its own SoftHSM token, SQLite catalog, dev issuer and
//! TLS credentials in a temp dir, serving on `127.0.0.1:0` through the same `run` as
//! `keybrokerd`, driven with the real client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use keybroker_broker::config::BrokerConfig;
use keybroker_client::{Client, ClientConfig};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::SoftHsmToken;
use keybroker_broker::keys::clock::{Clock, ManualClock, SystemClock};

/// A broker running in this test process.
pub struct TestBroker {
    /// Config, catalog, issuer and TLS files.
    pub dir: TempDir,
    /// The broker's token.
    pub token: SoftHsmToken,
    /// Further tokens of the inventory (kept alive with the broker).
    pub extra_tokens: Vec<SoftHsmToken>,
    /// `https://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Bound address.
    pub addr: SocketAddr,
    /// The HTTPS side port, when the config has `[http]`.
    pub http_addr: Option<SocketAddr>,
    /// The config it runs with.
    pub config: BrokerConfig,
    /// The lifecycle clock, when the test controls it (kept across restarts).
    pub clock: Option<ManualClock>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), keybroker_broker::StartError>>>,
}

/// Writes the config files of a test broker under `dir` for `token`; returns `broker.toml`.
///
/// # Errors
/// File-system or credential-generation failures.
pub fn write_config(dir: &Path, token: &SoftHsmToken, pin: &str) -> anyhow::Result<PathBuf> {
    write_config_with(dir, &[(token, pin, "softhsm-test", "EU")], "")
}

/// Like [`write_config`] for several HSMs `(token, pin, id, jurisdiction)` and a `[residency]`
/// body (empty for the defaults).
///
/// # Errors
/// File-system or credential-generation failures.
pub fn write_config_with(
    dir: &Path,
    hsms: &[(&SoftHsmToken, &str, &str, &str)],
    residency: &str,
) -> anyhow::Result<PathBuf> {
    use std::fmt::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    keybroker_broker::dev::init_issuer(dir)?;
    keybroker_broker::dev::init_tls(dir)?;
    keybroker_broker::dev::init_policy(dir)?;
    let mut inventory = String::new();
    for (token, pin, id, jurisdiction) in hsms {
        let pin_file = dir.join(format!("hsm-pin-{id}"));
        std::fs::write(&pin_file, pin)?;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))?;
        write!(
            inventory,
            "[[hsm]]\nid = \"{id}\"\nmodule = \"{}\"\ntoken_label = \"{}\"\n\
             pin = {{ file = \"{}\" }}\njurisdiction = \"{jurisdiction}\"\nregion = \"test-1\"\n\
             provider = \"SoftHSM2\"\ncertification = \"none\"\npool_size = 4\n",
            token.module.display(),
            token.label,
            pin_file.display()
        )?;
    }
    std::fs::write(dir.join("hsm.toml"), inventory)?;
    let config = dir.join("broker.toml");
    std::fs::write(
        &config,
        format!(
            "hsm_inventory = \"hsm.toml\"\n[server]\nlisten = \"127.0.0.1:0\"\n\
             tls_cert = \"tls/server.pem\"\ntls_key = \"tls/server-key.pem\"\n\
             [store]\nsqlite_path = \"catalog.db\"\n[residency]\n{residency}\n\
             [[identity.jwt_issuers]]\nissuer = \"{}\"\naudiences = [\"{}\"]\n\
             jwks_file = \"dev-issuer/jwks.json\"\nalgorithms = [\"EdDSA\"]\n{}",
            keybroker_broker::dev::DEV_ISSUER,
            keybroker_broker::dev::DEV_AUDIENCE,
            keybroker_broker::dev::POLICY_SECTION,
        ),
    )?;
    Ok(config)
}

impl TestBroker {
    /// Starts a broker on a fresh token.
    ///
    /// # Errors
    /// Token, config or start-up failures.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a broker on a fresh token, after `edit` adjusted its loaded config.
    ///
    /// # Errors
    /// Token, config or start-up failures.
    pub async fn start_with(edit: impl FnOnce(&mut BrokerConfig)) -> anyhow::Result<Self> {
        // Broker logs for a failing test: KEYBROKER_LOG=debug cargo nextest run --no-capture
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("KEYBROKER_LOG") {
            let _already = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let token = SoftHsmToken::new("e2e")?;
        let dir = tempfile::tempdir()?;
        let pin = token.pin.clone();
        let config_path = write_config(dir.path(), &token, &pin)?;
        let mut config = BrokerConfig::load(&config_path)?;
        edit(&mut config);
        Self::serve(dir, token, Vec::new(), config, None).await
    }

    /// Starts a broker whose lifecycle deadlines (destruction, rotation, leases) run on a
    /// manual clock the test advances; `config_keys` is appended to the `[keys]` section of
    /// the config file (e.g. `allow_short_destruction_wait = true`).
    ///
    /// # Errors
    /// Token, config or start-up failures.
    pub async fn start_with_clock(config_keys: &str) -> anyhow::Result<(Self, ManualClock)> {
        let token = SoftHsmToken::new("e2e")?;
        let dir = tempfile::tempdir()?;
        let pin = token.pin.clone();
        let config_path = write_config(dir.path(), &token, &pin)?;
        let text = std::fs::read_to_string(&config_path)?;
        std::fs::write(&config_path, format!("{text}\n[keys]\n{config_keys}\n"))?;
        let config = BrokerConfig::load(&config_path)?;
        let clock = ManualClock::starting_now();
        let b = Self::serve(dir, token, Vec::new(), config, Some(clock.clone())).await?;
        Ok((b, clock))
    }

    /// Starts a broker with the usual EU token plus a second token `softhsm-us` in
    /// jurisdiction `US`, under the `[residency]` body `residency`.
    ///
    /// # Errors
    /// Token, config or start-up failures.
    pub async fn start_with_us_hsm(residency: &str) -> anyhow::Result<Self> {
        let token = SoftHsmToken::new("e2e")?;
        let us = SoftHsmToken::new("e2e-us")?;
        let dir = tempfile::tempdir()?;
        let config_path = write_config_with(
            dir.path(),
            &[
                (&token, &token.pin, "softhsm-test", "EU"),
                (&us, &us.pin, "softhsm-us", "US"),
            ],
            residency,
        )?;
        let config = BrokerConfig::load(&config_path)?;
        Self::serve(dir, token, vec![us], config, None).await
    }

    /// Stops this broker and starts a new one on the same files and tokens, with the
    /// `[residency]` body `residency` (the operator tightened or loosened the rules).
    ///
    /// # Errors
    /// Shutdown, config or start-up failures.
    pub async fn restart_with_residency(mut self, residency: &str) -> anyhow::Result<Self> {
        self.halt().await?;
        let mut hsms = vec![(&self.token, self.token.pin.as_str(), "softhsm-test", "EU")];
        if let Some(us) = self.extra_tokens.first() {
            hsms.push((us, us.pin.as_str(), "softhsm-us", "US"));
        }
        let config_path = write_config_with(self.dir.path(), &hsms, residency)?;
        let Self {
            dir,
            token,
            extra_tokens,
            ..
        } = self;
        let config = BrokerConfig::load(&config_path)?;
        Self::serve(dir, token, extra_tokens, config, None).await
    }

    async fn serve(
        dir: TempDir,
        token: SoftHsmToken,
        extra_tokens: Vec<SoftHsmToken>,
        config: BrokerConfig,
        clock: Option<ManualClock>,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let broker_clock: std::sync::Arc<dyn Clock> = match &clock {
            Some(c) => std::sync::Arc::new(c.clone()),
            None => std::sync::Arc::new(SystemClock),
        };
        let broker = keybroker_broker::Broker::start_with_clock(&config, broker_clock).await?;
        let http_addr = broker.http_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(broker.serve(listener, async {
            let _ = rx.await;
        }));
        Ok(Self {
            dir,
            token,
            extra_tokens,
            endpoint: format!("https://127.0.0.1:{}", addr.port()),
            addr,
            http_addr,
            config,
            clock,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// A fresh dev token for this broker's issuer.
    ///
    /// # Errors
    /// Signing failures.
    pub fn mint_token(&self, ttl: Duration) -> anyhow::Result<String> {
        let t = keybroker_client::dev_token::mint(self.dir.path(), ttl)?;
        Ok(t.as_str().to_owned())
    }

    /// Writes a fresh token to `<dir>/token` and returns its path.
    ///
    /// # Errors
    /// File or signing failures.
    pub fn token_file(&self) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join("token");
        let t = keybroker_client::dev_token::mint(self.dir.path(), Duration::from_secs(600))?;
        keybroker_client::dev_token::write_token_file(&path, &t)?;
        Ok(path)
    }

    /// The dev CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("tls/ca.pem")
    }

    /// A connected client with a valid token.
    ///
    /// # Errors
    /// Connection failures.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let cfg = ClientConfig {
            ca: Some(self.ca()),
            token_file: Some(self.token_file()?),
            ..ClientConfig::new(self.endpoint.clone())
        };
        Client::connect(cfg).await.context("connect")
    }

    /// A raw tonic channel (TLS, dev CA) for calls the client library does not make.
    ///
    /// # Errors
    /// Connection failures.
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        let ca = std::fs::read(self.ca())?;
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        Ok(tonic::transport::Channel::from_shared(format!(
            "https://localhost:{}",
            self.addr.port()
        ))?
        .tls_config(tls)?
        .connect()
        .await?)
    }

    /// Stops the broker and starts it again on the same token, config and files (on a new
    /// port).
    ///
    /// # Errors
    /// Stop or start-up failures.
    pub async fn restart(mut self) -> anyhow::Result<Self> {
        self.halt().await?;
        let Self {
            dir,
            token,
            extra_tokens,
            config,
            clock,
            ..
        } = self;
        Self::serve(dir, token, extra_tokens, config, clock).await
    }

    /// Stops the broker and waits for it.
    ///
    /// # Errors
    /// The broker failed while serving.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.halt().await
    }

    async fn halt(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }

    /// Every intact record of the audit log, in index order, as JSON text (read from the
    /// segment files: `len u32 BE | crc32c u32 BE | bytes` frames; a torn tail ends the scan).
    ///
    /// # Errors
    /// Unreadable segment files or a record that is not JSON.
    pub fn audit_records(&self) -> anyhow::Result<Vec<String>> {
        read_audit_segments(&self.config.audit.dir)
    }

    /// Stops the broker (keeping its files) so its audit log can be read at rest.
    ///
    /// # Errors
    /// The broker failed while serving.
    pub async fn stop_ref(&mut self) -> anyhow::Result<()> {
        self.halt().await
    }
}

/// Every intact record of the audit log in `audit_dir`, in index order, as JSON text (read
/// from the segment files: `len u32 BE | crc32c u32 BE | bytes` frames; a torn tail ends the
/// scan).
///
/// # Errors
/// Unreadable segment files or a record that is not JSON.
pub fn read_audit_segments(audit_dir: &Path) -> anyhow::Result<Vec<String>> {
    let dir = audit_dir.join("log");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.retain(|p| p.extension().is_some_and(|e| e == "seg"));
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let buf = std::fs::read(&name)?;
        let mut at = 0;
        while let Some(h) = buf.get(at..at + 8) {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let Some(body) = buf.get(at + 8..at + 8 + len) else {
                break;
            };
            let text = String::from_utf8(body.to_vec())?;
            let _: serde_json::Value = serde_json::from_str(&text)?;
            out.push(text);
            at += 8 + len;
        }
    }
    Ok(out)
}
