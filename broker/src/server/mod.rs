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
use std::collections::BTreeMap;

use crate::audit::{AuditRecord, Decision, Op};
use crate::keys::KeyError;
use crate::keys::name::KeyName;
use crate::store::Purpose;

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

    /// Creates `name` unless it exists, and records the creation in the audit log before
    /// returning (dev mode's keys: every key operation has its record, also those no caller
    /// asked for). The record has no principal (the broker itself acted) and `why` as reason.
    /// Returns whether the key was created.
    ///
    /// # Errors
    /// The catalog, the HSM, or the audit log failed (fail closed: the caller stops).
    pub async fn ensure_key(
        &self,
        name: &KeyName,
        purpose: Purpose,
        labels: BTreeMap<String, String>,
        why: &str,
    ) -> Result<bool, EnsureKeyError> {
        let keys = &self.state.keys;
        match keys.get_key(name).await {
            Ok(_) => return Ok(false),
            Err(KeyError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        let key = keys.create_key(name, purpose, labels, None, None).await?;
        let mut r = AuditRecord::new(
            Op::CreateKey,
            uuid::Uuid::new_v4().to_string(),
            self.state.replica_id.clone(),
        );
        r.key_name = Some(key.name.clone());
        r.key_version = key.primary_version();
        r.hsm_id = Some(key.hsm_id.clone());
        r.hsm_jurisdiction = keys.hsm_info(&key.hsm_id).map(|h| h.jurisdiction.clone());
        r.decision = Decision::Allow;
        r.reasons = vec![why.to_owned()];
        "ok".clone_into(&mut r.outcome.code);
        self.state.audit.append(r).await?;
        Ok(true)
    }
}

/// Why [`Broker::ensure_key`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EnsureKeyError {
    /// The key service refused or failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The creation could not be recorded.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
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
