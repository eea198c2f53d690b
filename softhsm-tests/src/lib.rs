//! Fixtures for the end-to-end tests: SoftHSM2 tokens in temp dirs, brokers on 127.0.0.1:0.
//!
//! # One SoftHSM configuration per test process
//! SoftHSM takes its configuration from `SOFTHSM2_CONF` in the *process* environment when the
//! library is initialized, and a PKCS#11 library is initialized once per process. Plain
//! `cargo test` runs the tests of one binary as threads of one process, `cargo nextest` runs
//! each test in its own process; both must work. So:
//!
//! - [`process_softhsm_conf`] creates, once per process (`OnceLock`), a temp dir with a
//!   `softhsm2.conf` and a `tokens/` directory, and points `SOFTHSM2_CONF` at it before any
//!   PKCS#11 library is loaded by a fixture user.
//! - [`SoftHsmToken::new`] initializes a token with a unique label *inside that shared
//!   tokendir* (running `softhsm2-util` with `SOFTHSM2_CONF` set for the child only). Tests
//!   therefore never share a token, and every pool in the process sees every token.
//!   `HsmPool::connect` rescans the library when a token created after the library was
//!   initialized is not found, so tokens can be created at any time.
//!
//! Tests must create their tokens through this fixture and must not set `SOFTHSM2_CONF`
//! themselves. The temp dir of the process configuration lives as long as the process (it is
//! in a `static`, so it is not removed at exit; its name starts with `keybroker-softhsm-`).

pub mod bao;
pub mod broker;
pub mod dev;
pub mod https;
pub mod postgres;
pub mod replicas;
pub mod store;
pub mod svid;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use anyhow::{Context, bail};
use keybroker_broker::hsm::{HsmSettings, TokenSelector};
use tempfile::TempDir;

/// Security officer PIN of every fixture token.
pub const SO_PIN: &str = "12345678";
/// User PIN of every fixture token.
pub const USER_PIN: &str = "87654321";

struct ProcessConf {
    dir: TempDir,
    conf: PathBuf,
}

fn process_conf() -> anyhow::Result<&'static ProcessConf> {
    static CONF: OnceLock<Result<ProcessConf, String>> = OnceLock::new();
    CONF.get_or_init(|| make_process_conf().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot set up the SoftHSM configuration: {e}"))
}

fn make_process_conf() -> anyhow::Result<ProcessConf> {
    let dir = tempfile::Builder::new()
        .prefix("keybroker-softhsm-")
        .tempdir()
        .context("temp dir")?;
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).context("tokens dir")?;
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .context("write softhsm2.conf")?;
    #[allow(unsafe_code)]
    // SAFETY: this runs once (inside `OnceLock::get_or_init`), before any fixture user loads a
    // PKCS#11 library: every token, hence every pool, is made through this fixture, which
    // calls this first. Rust's own env access is locked; the remaining hazard is C code
    // calling getenv on another thread right now, and no C code of ours runs yet. glibc never
    // frees a replaced environ array, so even a concurrent getenv would read valid memory.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", &conf);
    }
    Ok(ProcessConf { dir, conf })
}

/// The `softhsm2.conf` shared by every token of this test process; sets `SOFTHSM2_CONF` on
/// first use. Call it before loading SoftHSM in-process (the fixture does).
///
/// # Panics
/// When no temp dir can be created: no SoftHSM test can run then.
#[allow(
    clippy::expect_used,
    reason = "test fixture: without a config no test can run"
)]
pub fn process_softhsm_conf() -> &'static Path {
    &process_conf().expect("SoftHSM process configuration").conf
}

/// The SoftHSM2 PKCS#11 module: `$SOFTHSM2_MODULE`, or the first of the usual paths.
#[must_use]
pub fn softhsm_module() -> PathBuf {
    if let Some(path) = std::env::var_os("SOFTHSM2_MODULE") {
        return PathBuf::from(path);
    }
    [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
        "/usr/lib64/pkcs11/libsofthsm2.so",
        "/opt/homebrew/lib/softhsm/libsofthsm2.so",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"))
}

/// A freshly initialized SoftHSM2 token of this process's tokendir.
#[derive(Debug)]
pub struct SoftHsmToken {
    /// Scratch dir of this token (where [`SoftHsmToken::unplug`] parks its files).
    pub dir: TempDir,
    /// PKCS#11 module path.
    pub module: PathBuf,
    /// The token's label: the prefix given to `new` plus a suffix unique in this process.
    pub label: String,
    /// User PIN.
    pub pin: String,
    /// `softhsm2.conf` in effect (the process-wide one).
    pub conf: PathBuf,
    /// This token's directory under the tokendir.
    token_dir: PathBuf,
}

impl SoftHsmToken {
    /// Initializes a token labelled `<prefix>-<n>` (at most 32 bytes) in the process tokendir.
    ///
    /// # Errors
    /// When `softhsm2-util` is missing or fails, or the temp dirs cannot be made.
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        // Token creation is serialized so that the token's new directory can be told apart.
        static CREATE: Mutex<()> = Mutex::new(());
        let process = process_conf()?;
        let label = unique_label(prefix, SEQ.fetch_add(1, Ordering::Relaxed));
        let tokens = process.dir.path().join("tokens");
        let _serialized = CREATE.lock().unwrap_or_else(PoisonError::into_inner);
        let before = list_dir(&tokens)?;
        init_token(&process.conf, &label)?;
        let mut new_dirs = list_dir(&tokens)?
            .into_iter()
            .filter(|d| !before.contains(d));
        let (Some(token_dir), None) = (new_dirs.next(), new_dirs.next()) else {
            bail!(
                "cannot tell which directory under {} is the new token",
                tokens.display()
            );
        };
        Ok(Self {
            dir: tempfile::Builder::new()
                .prefix("keybroker-token-")
                .tempdir()
                .context("token scratch dir")?,
            module: softhsm_module(),
            label,
            pin: USER_PIN.to_owned(),
            conf: process.conf.clone(),
            token_dir,
        })
    }

    /// Settings for an `HsmPool` on this token (pool of 4 sessions).
    #[must_use]
    pub fn hsm_settings(&self, id: &str) -> HsmSettings {
        HsmSettings {
            id: id.to_owned(),
            module: self.module.clone(),
            token: TokenSelector::Label(self.label.clone()),
            pin: self.pin.clone().into(),
            pool_size: 4,
        }
    }

    /// Simulates pulling the device: moves the token's directory out of the tokendir.
    ///
    /// SoftHSM's file backend keeps no token file open between calls; it re-reads (stats)
    /// the token and object files on use. With the directory gone, key handles answer
    /// `CKR_OBJECT_HANDLE_INVALID`, object searches find nothing and `C_GetTokenInfo` answers
    /// `CKR_GENERAL_ERROR`; after `C_Finalize` + `C_Initialize` the token is not listed at all.
    /// That is what a removed HSM or a lost network HSM looks like to the pool.
    ///
    /// # Errors
    /// When the directory cannot be moved.
    pub fn unplug(&self) -> anyhow::Result<()> {
        std::fs::rename(&self.token_dir, self.parked()).context("moving the token out")
    }

    /// Puts the token back after [`SoftHsmToken::unplug`].
    ///
    /// # Errors
    /// When the directory cannot be moved.
    pub fn plug_in(&self) -> anyhow::Result<()> {
        std::fs::rename(self.parked(), &self.token_dir).context("moving the token back")
    }

    fn parked(&self) -> PathBuf {
        self.dir.path().join("parked-token")
    }
}

/// Runs `softhsm2-util --init-token`. It reads every token of the tokendir first, and a
/// token the in-process library is rewriting at that instant reads as broken ("Could not get
/// info about the token"), so a failure is retried a few times.
fn init_token(conf: &Path, label: &str) -> anyhow::Result<()> {
    const ATTEMPTS: usize = 5;
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let output = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
            .output()
            .context("running softhsm2-util (is SoftHSM2 installed?)")?;
        if output.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&output.stderr).into_owned();
    }
    bail!("softhsm2-util --init-token failed {ATTEMPTS} times: {last}")
}

fn unique_label(prefix: &str, seq: usize) -> String {
    let suffix = format!("-{}-{seq}", std::process::id());
    let keep = 32usize.saturating_sub(suffix.len());
    let mut cut = prefix.len().min(keep);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &prefix[..cut])
}

fn list_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()).map_err(anyhow::Error::from))
        .collect()
}

/// A binary of this workspace (`keybrokerd`, `keybroker`), next to the running test's
/// directory: `target/<profile>/deps/<test>` → `target/<profile>/<name>`.
///
/// # Errors
/// When the binary was not built (`cargo build --workspace` builds it).
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target/<profile> directory")?;
    let path = profile_dir.join(name);
    if !path.exists() {
        bail!("{} not built (cargo build --workspace)", path.display());
    }
    Ok(path)
}
