//! `keybrokerd`: flags, config, tracing; everything else is in the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use keybroker_broker::config::BrokerConfig;
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
    init_tracing();
    match cli.command {
        Some(Cmd::CheckConfig { file }) => {
            let report = keybroker_broker::config::check_config(&file)?;
            println!("{report}");
            Ok(())
        }
        Some(Cmd::Dev { state_dir, listen }) => {
            let paths = dev::prepare(&state_dir).context("preparing the dev state dir")?;
            // SoftHSM reads SOFTHSM2_CONF once, when the module loads; set it before any thread
            // exists (the runtime is built below).
            #[allow(unsafe_code)]
            // SAFETY: single-threaded here: no runtime, no other thread reads the environment.
            unsafe {
                std::env::set_var("SOFTHSM2_CONF", paths.softhsm_conf());
            }
            runtime()?.block_on(run_dev(paths, listen))
        }
        None => {
            let path = cli
                .config
                .context("pass --config FILE, or use `keybrokerd dev`")?;
            let config = BrokerConfig::load(&path)?;
            runtime()?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(&config.server.listen)
                    .await
                    .with_context(|| {
                        format!("server.listen: cannot bind {}", config.server.listen)
                    })?;
                let shutdown = shutdown_signal()?;
                let hangups = hangup_signal()?;
                let broker = Broker::start(&config).await?;
                reload_on(hangups, broker.reloader());
                tracing::info!(addr = %listener.local_addr()?, "serving");
                broker.serve(listener, shutdown).await?;
                Ok(())
            })
        }
    }
}

async fn run_dev(paths: dev::DevPaths, listen: Option<String>) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let hangups = hangup_signal()?;
    let mut config = BrokerConfig::load(&paths.config())?;
    if let Some(l) = listen {
        config.server.listen = l
            .parse()
            .with_context(|| format!("--listen {l}: not an address"))?;
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
    reload_on(hangups, broker.reloader());
    let token = keybroker_client::dev_token::mint(&paths.dir, Duration::from_secs(24 * 3600))?;
    keybroker_client::dev_token::write_token_file(&paths.token(), &token)?;
    dev::write_client_env(&paths, &endpoint)?;
    println!("keybroker dev mode");
    println!("  endpoint:   {endpoint}");
    println!("  state dir:  {}", paths.dir.display());
    println!("  client env: source {}", paths.client_env().display());
    println!(
        "  try:        keybroker datakey generate {} --context dataset=demo",
        dev::DEMO_KEY
    );
    broker.serve(listener, shutdown).await?;
    Ok(())
}

async fn ensure_demo_key(broker: &Broker) -> anyhow::Result<()> {
    use keybroker_broker::keys::KeyError;
    use keybroker_broker::keys::name::KeyName;
    use keybroker_broker::store::Purpose;
    let name = KeyName::parse(dev::DEMO_KEY)?;
    match broker.keys().get_key(&name).await {
        Ok(_) => Ok(()),
        Err(KeyError::NotFound) => {
            let labels = [("classification".to_owned(), "demo".to_owned())].into();
            broker
                .keys()
                .create_key(&name, Purpose::DataKey, labels, None, None)
                .await?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYBROKER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Installs the SIGHUP handler now (the default action would kill the broker).
fn hangup_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).context("installing the SIGHUP handler")
}

/// On every SIGHUP, reloads what can change while serving; a refused part keeps its old state
/// (the reloader logs why). The task ends with the runtime.
fn reload_on(mut hangups: tokio::signal::unix::Signal, reloader: Reloader) {
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let r = reloader.clone();
            match tokio::task::spawn_blocking(move || r.reload()).await {
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
