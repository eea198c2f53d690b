//! A throwaway PostgreSQL cluster for the multi-replica tests: `initdb` into a temp dir, one
//! server on a free `127.0.0.1` port with its socket in the same dir, trust authentication,
//! stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root, so under root every server command runs as the
//! `postgres` user (`runuser -u postgres --`) on a temp dir chowned to it. The binaries come
//! from `$KEYBROKER_PG_BIN` or the newest `/usr/lib/postgresql/<N>/bin` (Debian's `postgresql`
//! package; `scripts/install-deps` installs it). When they are missing, [`TestPostgres::start`]
//! fails with that message: a test that needs PostgreSQL never passes without it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};
use tempfile::TempDir;

/// A running PostgreSQL server of this test.
#[derive(Debug)]
pub struct TestPostgres {
    /// Data directory, socket directory and log.
    pub dir: TempDir,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
    running: bool,
}

/// Where the server binaries are.
///
/// # Errors
/// No PostgreSQL installation found.
pub fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KEYBROKER_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/<N>/bin/initdb and no \
             $KEYBROKER_PG_BIN): run scripts/install-deps (apt package `postgresql`)"
        ),
    }
}

impl TestPostgres {
    /// Initializes a cluster and starts it; returns once it accepts connections.
    ///
    /// # Errors
    /// Missing binaries, `initdb` or start-up failures (the server log is in the message).
    pub fn start() -> anyhow::Result<Self> {
        let bin = pg_bin()?;
        let as_postgres = is_root()?;
        let dir = tempfile::Builder::new().prefix("kb-pg").tempdir()?;
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(dir.path()))?;
        }
        let port = crate::bao::free_port()?;
        let pg = Self {
            dir,
            port,
            bin,
            as_postgres,
            running: false,
        };
        let data = pg.data_dir();
        run(pg
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data))
        .context("initdb")?;
        let mut pg = pg;
        pg.start_server()?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `postgres://postgres@127.0.0.1:PORT/<db>`.
    #[must_use]
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs `sql` with `psql` as the superuser, returning its unaligned output.
    ///
    /// # Errors
    /// psql fails (the message has its stderr).
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = self
            .command("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Starts the server (again) and waits until it accepts connections (`pg_ctl -w` polls).
    ///
    /// # Errors
    /// The server did not start; the message has the end of its log.
    pub fn start_server(&mut self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let started = run(self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-o", &opts, "start"]));
        if let Err(e) = started {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            bail!("pg_ctl start: {e:#}\n{log}");
        }
        self.running = true;
        Ok(())
    }

    /// Stops the server (`-m immediate`: like a crash of the database host) and waits.
    ///
    /// # Errors
    /// pg_ctl failed.
    pub fn stop_server(&mut self) -> anyhow::Result<()> {
        run(self
            .command("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.data_dir())
            .arg("stop"))?;
        self.running = false;
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop_server();
        }
    }
}

fn is_root() -> anyhow::Result<bool> {
    let out = Command::new("id").arg("-u").output().context("id -u")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed: {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
