//! `keybrokerd`: flags, config, tracing; everything else is in the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use keybroker_broker::config::BrokerConfig;
use keybroker_broker::hardening::{self, Hardened, HardeningOptions};
use keybroker_broker::logging::{self, LogHandle};
use keybroker_broker::{Broker, Reloader, dev};

#[derive(Parser)]
#[command(
    name = "keybrokerd",
    version,
    about = "keybroker daemon: data keys from EU HSMs"
)]
struct Cli {
    /// Broker config (TOML). Required unless a subcommand is given.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Start even as root (refused by default; dev mode always allows it).
    #[arg(long)]
    allow_root: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Development mode: SoftHSM token, SQLite, dev issuer and CA, all created on first run.
    Dev {
        /// Where dev state lives (created on first run, reused after).
        #[arg(long, default_value = ".state/dev")]
        state_dir: PathBuf,
        /// Listen address (default from the dev config: 127.0.0.1:7443).
        #[arg(long)]
        listen: Option<String>,
        /// Side-port listen address (default from the dev config: 127.0.0.1:7480).
        #[arg(long)]
        http_listen: Option<String>,
        /// XKS proxy API listen address (default from the dev config: 127.0.0.1:7482).
        #[arg(long)]
        xks_listen: Option<String>,
    },
    /// Validates a broker config and its HSM inventory without starting.
    CheckConfig {
        /// Broker config file.
        file: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keybrokerd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::CheckConfig { file }) => {
            init_default_logging();
            let report = keybroker_broker::config::check_config(&file)?;
            println!("{report}");
            Ok(())
        }
        Some(Cmd::Dev {
            state_dir,
            listen,
            http_listen,
            xks_listen,
        }) => {
            // Dev mode: core dumps off, root allowed, memory not locked (dev secrets only).
            let hardened = hardening::harden(HardeningOptions {
                allow_root: true,
                lock_memory: false,
            })?;
            let paths = dev::prepare(&state_dir).context("preparing the dev state dir")?;
            // SoftHSM reads SOFTHSM2_CONF once, when the module loads; set it before any thread
            // exists (the runtime is built below).
            #[allow(unsafe_code)]
            // SAFETY: single-threaded here: no runtime, no other thread reads the environment.
            unsafe {
                std::env::set_var("SOFTHSM2_CONF", paths.softhsm_conf());
            }
            let listens = DevListens {
                grpc: listen,
                http: http_listen,
                xks: xks_listen,
            };
            runtime()?.block_on(run_dev(paths, listens, &hardened))
        }
        None => {
            let path = cli
                .config
                .context("pass --config FILE, or use `keybrokerd dev`")?;
            // Before anything secret is read, and before the runtime's threads exist.
            let hardened = hardening::harden(HardeningOptions {
                allow_root: cli.allow_root,
                lock_memory: true,
            })?;
            let config = BrokerConfig::load(&path)?;
            let log = logging::init(config.log.format, &config.log.level)?;
            report(&hardened);
            runtime()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&config.server.listen)
                    .await
                    .with_context(|| {
                        format!("server.listen: cannot bind {}", config.server.listen)
                    })?;
                let shutdown = shutdown_signal()?;
                let hangups = hangup_signal()?;
                let broker = Broker::start(&config).await?;
                reload_on(hangups, broker.reloader(), path, log);
                tracing::info!(addr = %listener.local_addr()?, "serving");
                broker.serve(listener, shutdown).await?;
                Ok(())
            })
        }
    }
}

/// Listen addresses given on the `dev` command line.
struct DevListens {
    grpc: Option<String>,
    http: Option<String>,
    xks: Option<String>,
}

async fn run_dev(
    paths: dev::DevPaths,
    listens: DevListens,
    hardened: &Hardened,
) -> anyhow::Result<()> {
    let DevListens {
        grpc: listen,
        http: http_listen,
        xks: xks_listen,
    } = listens;
    let shutdown = shutdown_signal()?;
    let hangups = hangup_signal()?;
    let mut config = BrokerConfig::load(&paths.config())?;
    let log = logging::init(config.log.format, &config.log.level)?;
    report(hardened);
    if let Some(l) = listen {
        config.server.listen = l
            .parse()
            .with_context(|| format!("--listen {l}: not an address"))?;
    }
    if let (Some(l), Some(http)) = (http_listen, config.http.as_mut()) {
        http.listen = l
            .parse()
            .with_context(|| format!("--http-listen {l}: not an address"))?;
    }
    if let (Some(l), Some(xks)) = (
        xks_listen,
        config.http.as_mut().and_then(|h| h.xks.as_mut()),
    ) {
        xks.listen = Some(
            l.parse()
                .with_context(|| format!("--xks-listen {l}: not an address"))?,
        );
    }
    let listener = tokio::net::TcpListener::bind(&config.server.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (use --listen 127.0.0.1:0)",
                config.server.listen
            )
        })?;
    let endpoint = format!("https://127.0.0.1:{}", listener.local_addr()?.port());
    let broker = Broker::start(&config).await?;
    ensure_demo_key(&broker).await?;
    ensure_xks_keys(&broker).await?;
    reload_on(hangups, broker.reloader(), paths.config(), log);
    dev::write_token(&paths, Duration::from_secs(24 * 3600))?;
    // Before client.env: a harness that waits for client.env finds xks.env too.
    let xks_addr = broker.xks_addr();
    if let (Some(addr), Some(xks)) = (xks_addr, config.http.as_ref().and_then(|h| h.xks.as_ref())) {
        dev::write_xks_env(&paths, xks, addr)?;
    }
    dev::write_client_env(&paths, &endpoint)?;
    println!("keybroker dev mode");
    println!("  endpoint:   {endpoint}");
    if let Some(addr) = broker.http_addr() {
        // The scheme the side port really speaks: a dev config switched to TLS for the
        // transit endpoint (docs/vault-openbao.md) serves https.
        let http = config.http.as_ref();
        let scheme = if http.is_some_and(|h| h.tls) {
            "https"
        } else {
            "http"
        };
        let transit = match http.and_then(|h| h.transit.as_ref()) {
            Some(t) => format!(", /v1/{}/", t.mount),
            None => String::new(),
        };
        println!("  http:       {scheme}://{addr} (/healthz, /readyz, /metrics{transit})");
    }
    if let (Some(addr), Some(xks)) = (xks_addr, config.http.as_ref().and_then(|h| h.xks.as_ref())) {
        let prefix = xks.stores.first().map_or("", |s| s.uri_prefix.as_str());
        println!(
            "  xks:        https://localhost:{}/{prefix}/kms/xks/v1/ (source {})",
            addr.port(),
            paths.dir.join("xks.env").display()
        );
    }
    println!("  state dir:  {}", paths.dir.display());
    println!("  client env: source {}", paths.client_env().display());
    // Before `try:`, which harnesses read as the last line.
    println!(
        "  attested:   {} needs a TEE attestation result (docs/attestation.md: keybroker \
         attestation nonce, keybroker dev-attestation)",
        dev::CONFIDENTIAL_KEY
    );
    println!(
        "  try:        keybroker datakey generate {} --context dataset=demo",
        dev::DEMO_KEY
    );
    broker.serve(listener, shutdown).await?;
    Ok(())
}

/// The dev data keys, created (and audited) on first run: the demo key, and
/// `models/confidential`, which the dev policy releases only to an attested TEE.
async fn ensure_demo_key(broker: &Broker) -> anyhow::Result<()> {
    use keybroker_broker::keys::name::KeyName;
    use keybroker_broker::store::Purpose;
    for (name, classification) in [
        (dev::DEMO_KEY, "demo"),
        (dev::CONFIDENTIAL_KEY, "confidential"),
    ] {
        let labels = [("classification".to_owned(), classification.to_owned())].into();
        broker
            .ensure_key(
                &KeyName::parse(name)?,
                Purpose::DataKey,
                labels,
                DEV_KEY_REASON,
            )
            .await?;
    }
    Ok(())
}

/// The reason on the audit record of a key dev mode made for itself.
const DEV_KEY_REASON: &str = "dev mode: created at first start";

/// The dev XKS keys (`xks.env` names them), created (and audited) on first run.
async fn ensure_xks_keys(broker: &Broker) -> anyhow::Result<()> {
    use keybroker_broker::keys::name::KeyName;
    use keybroker_broker::keys::xks::XKS_USAGE_LABEL;
    use keybroker_broker::store::Purpose;
    for (_, name, usage) in dev::XKS_KEYS {
        let labels = [(XKS_USAGE_LABEL.to_owned(), usage.to_owned())].into();
        broker
            .ensure_key(&KeyName::parse(name)?, Purpose::Xks, labels, DEV_KEY_REASON)
            .await?;
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Logs what hardening did (logging starts after it).
fn report(hardened: &Hardened) {
    for w in &hardened.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        memory_locked = hardened.memory_locked,
        "process hardened: core dumps off"
    );
}

/// Logging for the subcommands that load no broker config: text, `KEYBROKER_LOG` or `info`.
fn init_default_logging() {
    let _ = logging::init(
        keybroker_broker::config::LogFormat::Text,
        &keybroker_broker::config::LogConfig::default().level,
    );
}

/// Installs the SIGHUP handler now (the default action would kill the broker).
fn hangup_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).context("installing the SIGHUP handler")
}

/// On every SIGHUP, reloads what can change while serving: the log level (`[log] level` of
/// `config`, unless `KEYBROKER_LOG` pins it), the policy and the client CA bundle. A refused
/// part keeps its old state and the log says why. The task ends with the runtime.
fn reload_on(
    mut hangups: tokio::signal::unix::Signal,
    reloader: Reloader,
    config: PathBuf,
    log: LogHandle,
) {
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let (r, config, log) = (reloader.clone(), config.clone(), log.clone());
            let done = tokio::task::spawn_blocking(move || {
                reload_log_level(&config, &log);
                r.reload()
            })
            .await;
            match done {
                Ok(refused) if refused.is_empty() => tracing::info!("reload complete"),
                Ok(refused) => {
                    tracing::warn!(
                        refused = refused.len(),
                        "reload finished with refused parts"
                    );
                }
                Err(e) => tracing::error!(error = %e, "reload task failed"),
            }
        }
    });
}

/// Re-reads `[log] level` from `config`; a config that no longer loads keeps the old level.
fn reload_log_level(config: &std::path::Path, log: &LogHandle) {
    match BrokerConfig::load(config).map(|c| c.log.level) {
        Ok(level) => match log.set_level(&level) {
            Ok(true) => tracing::info!(level = %level, "log level reloaded"),
            Ok(false) => tracing::info!("log level unchanged"),
            Err(e) => tracing::error!(error = %e, "log level refused; the previous one stays"),
        },
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; the previous log level stays");
        }
    }
}

/// Installs the SIGTERM/SIGINT handlers now (so a signal that arrives before serving starts is
/// not lost to the default action) and returns the future that resolves on the first one.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
    })
}
