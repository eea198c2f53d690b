//! A `keybrokerd dev` process for tests of the daemon itself (flags, signals, logs, side port):
//! started on free ports in a temp state dir; everything it prints (stdout and stderr) is kept,
//! so a test can wait for a line or scan the whole output afterwards.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::workspace_bin;

/// A running `keybrokerd dev`.
pub struct DevBroker {
    child: Child,
    /// The gRPC endpoint (`https://127.0.0.1:PORT`).
    pub endpoint: String,
    /// The side port (plain HTTP in dev mode).
    pub http: SocketAddr,
    /// The state dir.
    pub state: PathBuf,
    lines: Receiver<String>,
    output: Arc<Mutex<Vec<String>>>,
}

fn drain(
    pipe: impl std::io::Read + Send + 'static,
    tx: Sender<String>,
    all: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut all) = all.lock() {
                all.push(line.clone());
            }
            // The receiver may be gone (test finished); keep draining so the pipe never fills.
            let _ = tx.send(line);
        }
    });
}

impl DevBroker {
    /// Starts `keybrokerd dev` on `state` with extra arguments and environment (e.g.
    /// `KEYBROKER_LOG`), and waits (30 s at most) for its banner.
    ///
    /// # Errors
    /// The binary is missing, or it exited or printed no banner.
    pub fn start(state: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut child = Command::new(workspace_bin("keybrokerd")?)
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--xks-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .arg("--state-dir")
            .arg(state)
            .env_remove("SOFTHSM2_CONF")
            .env_remove("KEYBROKER_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = channel();
        drain(
            child.stdout.take().context("stdout")?,
            tx.clone(),
            output.clone(),
        );
        drain(child.stderr.take().context("stderr")?, tx, output.clone());
        let mut broker = Self {
            child,
            endpoint: String::new(),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            state: state.to_path_buf(),
            lines,
            output,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut endpoint, mut http) = (None, None);
        while endpoint.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = broker.lines.recv_timeout(left).with_context(|| {
                format!("keybrokerd dev printed no banner: {:?}", broker.output())
            })?;
            let line = line.trim();
            if let Some(e) = line.strip_prefix("endpoint:") {
                endpoint = Some(e.trim().to_owned());
            }
            if let Some(h) = line.strip_prefix("http:") {
                let addr = h.split_whitespace().next().unwrap_or_default();
                http = Some(
                    addr.trim_start_matches("https://")
                        .trim_start_matches("http://")
                        .parse()?,
                );
            }
        }
        broker.endpoint = endpoint.unwrap_or_default();
        broker.http = http.unwrap_or(broker.http);
        Ok(broker)
    }

    /// Every line printed so far, stdout and stderr interleaved.
    #[must_use]
    pub fn output(&self) -> Vec<String> {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits (bounded) for a line containing `needle`, printed after the lines already waited
    /// for; returns it.
    ///
    /// # Errors
    /// No such line within `timeout`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("no line with {needle:?} within {timeout:?}"),
            }
        }
    }

    /// `client.env` of the state dir as variables.
    ///
    /// # Errors
    /// The file is unreadable.
    pub fn client_env(&self) -> anyhow::Result<HashMap<String, String>> {
        let text = std::fs::read_to_string(self.state.join("client.env"))?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Runs the `keybroker` CLI with this broker's `client.env`.
    ///
    /// # Errors
    /// The CLI cannot be started.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(workspace_bin("keybroker")?)
            .args(args)
            .env_remove("KEYBROKER_ENDPOINT")
            .env_remove("KEYBROKER_CA")
            .env_remove("KEYBROKER_TOKEN_FILE")
            .envs(self.client_env()?)
            .output()?)
    }

    /// Sends `signal` (`TERM`, `HUP`, …) to the daemon.
    ///
    /// # Errors
    /// `kill` failed.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()?
            .success();
        if !ok {
            bail!("kill -{signal} failed");
        }
        Ok(())
    }

    /// SIGTERM, then waits for the exit.
    ///
    /// # Errors
    /// The signal or the wait failed.
    pub fn stop(mut self) -> anyhow::Result<(ExitStatus, Vec<String>)> {
        self.signal("TERM")?;
        let status = self.child.wait()?;
        // The drain threads end with the pipes; give them the last lines.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
        {}
        Ok((status, self.output()))
    }
}

impl Drop for DevBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
