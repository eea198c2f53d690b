//! `openbao-kms-keybroker`: checks it runs under bao, logs to stderr (bao shows plugin stderr
//! in its own log), and serves until bao says stop. SIGINT is ignored like every go-plugin
//! plugin does: a Ctrl-C at bao's terminal reaches the whole process group, and bao must be
//! able to finalize the seal first. SIGTERM stops the plugin.

use std::process::ExitCode;

use openbao_kms_keybroker::handshake::PluginEnv;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .event_format(openbao_kms_keybroker::hclog::HclogJson)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYBROKER_PLUGIN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let env = match PluginEnv::from_env(|k| std::env::var(k).ok()) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("openbao-kms-keybroker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("openbao-kms-keybroker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let mut stdout = std::io::stdout();
        openbao_kms_keybroker::run(env, &mut stdout, terminated()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "plugin failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM; SIGINT is logged and ignored.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; relying on bao's Shutdown call");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => tracing::info!("SIGINT ignored: bao stops the plugin"),
        }
    }
}
