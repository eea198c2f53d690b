//! The broker process: [`Broker::start`] opens everything a validated config names
//! (`start.rs`), [`Broker::serve`] serves until shutdown (`serve.rs`), a [`Reloader`] re-reads
//! what may change while serving (`reload.rs`); [`StartError`] says why a start failed
//! (`errors.rs`).

mod errors;
mod reload;
mod serve;
mod start;

pub use errors::StartError;
pub use reload::{ReloadError, Reloader};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::ApiState;
use crate::audit::checkpoint::Signer;
use crate::config::BrokerConfig;
use crate::identity::ClientCa;
use crate::keys::KeyService;

/// How long shutdown waits for in-flight requests and open streams.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header list (all gRPC metadata) of a request: room for an attestation result.
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// How often the health monitor probes the HSMs and the catalog.
const HEALTH_PROBE_EVERY: Duration = Duration::from_secs(1);

/// A started broker: HSMs logged in, catalog open, ready to serve.
#[derive(Debug)]
pub struct Broker {
    state: Arc<ApiState>,
    tls: Arc<rustls::ServerConfig>,
    client_ca: Option<(Arc<ClientCa>, Duration)>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    checkpoints: Option<(Signer, std::path::PathBuf)>,
    /// Set when replicas share a PostgreSQL catalog and audit log.
    postgres: Option<sqlx::PgPool>,
    side_port: Option<SidePort>,
}

/// The HTTPS side port, bound at start so its address is known before serving.
#[derive(Debug)]
struct SidePort {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    transit: Option<crate::config::TransitConfig>,
    xks: Option<XksPort>,
}

/// The XKS proxy API: its key stores, and its own TLS listener when it has one.
#[derive(Debug)]
struct XksPort {
    stores: crate::http::xks::Stores,
    own: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
}

impl Broker {
    /// A handle that reloads the policy and the client CA bundle (and whatever else can change
    /// while serving); `main` calls it on SIGHUP.
    #[must_use]
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
            client_ca: self.client_ca.as_ref().map(|(ca, _)| ca.clone()),
        }
    }

    /// The address of the HTTPS side port, when one is configured.
    #[must_use]
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.side_port
            .as_ref()
            .and_then(|s| s.listener.local_addr().ok())
    }

    /// The address AWS KMS calls for the XKS proxy API, when it is enabled: its own listener,
    /// or the side port.
    #[must_use]
    pub fn xks_addr(&self) -> Option<std::net::SocketAddr> {
        let side = self.side_port.as_ref()?;
        let xks = side.xks.as_ref()?;
        match &xks.own {
            Some((listener, _)) => listener.local_addr().ok(),
            None => side.listener.local_addr().ok(),
        }
    }

    /// The key service (dev mode uses it to create the demo key).
    pub fn keys(&self) -> &KeyService {
        &self.state.keys
    }
}

/// The default replica name in audit records: the host name (the pod name on Kubernetes).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Starts the broker from `config` and serves on `listener` until `shutdown` resolves.
///
/// # Errors
/// See [`StartError`].
pub async fn run(
    config: BrokerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    Broker::start(&config)
        .await?
        .serve(listener, shutdown)
        .await
}
