//! Start-up and serving: opens the HSMs, the catalog and the identity layer from a validated
//! config, then serves gRPC over TLS until the shutdown future resolves.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::api::{self, ApiState};
use crate::audit::checkpoint::Signer;
use crate::audit::{AuditLog, FileAuditLog};
use crate::config::BrokerConfig;
use crate::hsm::{HsmPool, HsmSettings, TokenSelector};
use crate::identity::{IssuerSettings, JwtVerifier};
use crate::keys::{HsmHandle, KeyService, KeySettings};
use crate::policy::{PolicySlot, Reloaded};
use crate::store::{SqliteStore, Store};

/// How long shutdown waits for in-flight requests and open streams.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the health monitor probes the HSMs and the catalog.
const HEALTH_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Why the broker did not start. Each message names the config field involved.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// PIN unreadable.
    #[error("{field}: {source}")]
    Pin {
        /// Inventory field.
        field: String,
        /// Cause.
        source: hsm_config::InventoryError,
    },
    /// HSM connection or login failed.
    #[error("{field}: {source}")]
    Hsm {
        /// Inventory field.
        field: String,
        /// Cause.
        source: crate::hsm::HsmError,
    },
    /// Catalog failed to open.
    #[error("store.sqlite_path: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The Cedar policy failed to load or validate.
    #[error("policy.file: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// JWKS failed to load.
    #[error("identity.jwt_issuers: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// TLS files unreadable.
    #[error("server.tls_cert / server.tls_key: {0}")]
    Tls(std::io::Error),
    /// Reflection descriptor set broken (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The audit log failed to open (fail closed: no audit, no broker).
    #[error("audit.dir: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Serving failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A started broker: HSMs logged in, catalog open, ready to serve.
#[derive(Debug)]
pub struct Broker {
    state: Arc<ApiState>,
    tls: ServerTlsConfig,
    tasks: TaskTracker,
    cancel: CancellationToken,
    checkpoints: Option<(Signer, std::path::PathBuf)>,
}

impl Broker {
    /// Opens everything the config names. Fails fast, naming the field, on a wrong PIN, a
    /// missing module, an unreadable JWKS or TLS file.
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start(config: &BrokerConfig) -> Result<Self, StartError> {
        let mut hsms = BTreeMap::new();
        for (i, entry) in config.inventory.hsms.iter().enumerate() {
            let field = |f: &str| {
                format!(
                    "{}: hsm[{i}] ({}).{f}",
                    config.hsm_inventory.display(),
                    entry.id
                )
            };
            let pin = entry.pin.read().map_err(|source| StartError::Pin {
                field: field("pin"),
                source,
            })?;
            let settings = HsmSettings {
                id: entry.id.clone(),
                module: entry.module.clone(),
                token: match &entry.token {
                    hsm_config::TokenSelector::Label(l) => TokenSelector::Label(l.clone()),
                    hsm_config::TokenSelector::Slot(s) => TokenSelector::Slot(*s),
                },
                pin,
                pool_size: usize::from(entry.pool_size),
            };
            let pool = HsmPool::connect(settings).await.map_err(|source| {
                let f = match &source {
                    crate::hsm::HsmError::ModuleLoad { .. } => "module",
                    crate::hsm::HsmError::TokenNotFound { .. } => "token_label / slot",
                    crate::hsm::HsmError::LoginFailed { .. } => "pin",
                    _ => "module",
                };
                StartError::Hsm {
                    field: field(f),
                    source,
                }
            })?;
            hsms.insert(
                entry.id.clone(),
                HsmHandle {
                    pool,
                    jurisdiction: entry.jurisdiction.clone(),
                    region: entry.region.clone(),
                },
            );
        }
        // Checkpoints are signed in the first HSM of the inventory (fail closed: no signer, no
        // broker).
        let replica = replica_id();
        let signer = match hsms.iter().next() {
            Some((id, h)) => Some(
                Signer::new(h.pool.clone(), format!("keybroker/{replica}/audit"))
                    .await
                    .map_err(|source| StartError::Hsm {
                        field: format!(
                            "{}: hsm {id}: audit checkpoint key {}",
                            config.hsm_inventory.display(),
                            crate::audit::checkpoint::KEY_LABEL
                        ),
                        source,
                    })?,
            ),
            None => None,
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.store.sqlite_path).await?);
        let issuers = config
            .identity
            .jwt_issuers
            .iter()
            .map(|i| IssuerSettings {
                issuer: i.issuer.clone(),
                audiences: i.audiences.clone(),
                jwks_file: i.jwks_file.clone(),
                algorithms: i.algorithms.iter().map(|a| (*a).into()).collect(),
                max_token_lifetime: i.max_token_lifetime,
                leeway: i.leeway,
                job_claim: i.job_claim.clone(),
                cluster: i.cluster.clone(),
                region: i.region.clone(),
                jurisdiction: i.jurisdiction.clone(),
            })
            .collect();
        let verifier = JwtVerifier::new(issuers)?;
        let policy = PolicySlot::load(config.policy.file.clone())?;
        tracing::info!(policy_sha256 = policy.current().sha256(), "policy loaded");
        let keys = KeyService::new(
            store,
            hsms,
            KeySettings {
                allowed_jurisdictions: config
                    .residency
                    .allowed_jurisdictions
                    .iter()
                    .cloned()
                    .collect(),
                default_lease_ttl: config.keys.default_lease_ttl,
                max_lease_ttl: config.keys.max_lease_ttl,
                rotate_after_wraps: config.keys.rotate_after_wraps,
            },
        );
        let audit_dir = config.audit.dir.clone();
        let audit = tokio::task::spawn_blocking(move || FileAuditLog::open(&audit_dir, |_| {}))
            .await
            .map_err(|e| crate::audit::AuditError::Io {
                what: "open",
                path: config.audit.dir.clone(),
                source: std::io::Error::other(e),
            })??;
        let audit: Arc<dyn AuditLog> = Arc::new(audit);
        let cert = std::fs::read(&config.server.tls_cert).map_err(StartError::Tls)?;
        let key = std::fs::read(&config.server.tls_key).map_err(StartError::Tls)?;
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        Ok(Self {
            state: Arc::new(ApiState {
                keys,
                verifier,
                audit,
                replica_id: replica,
                policy,
                residency: config.residency.clone(),
                checkpoint: crate::audit::checkpoint::Latest::default(),
            }),
            checkpoints: signer.map(|s| (s, config.audit.dir.clone())),
            tls,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        })
    }

    /// A handle that reloads the policy (and whatever else can change while serving); `main`
    /// calls it on SIGHUP.
    #[must_use]
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
        }
    }

    /// The key service (dev mode uses it to create the demo key).
    pub fn keys(&self) -> &KeyService {
        &self.state.keys
    }

    /// Serves on `listener` until `shutdown` resolves, then stops background tasks.
    ///
    /// # Errors
    /// The server failed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), StartError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        let routes = api::services(self.state.clone(), health)?;
        let monitor = crate::health::Monitor::new(
            self.state.keys.clone(),
            self.state.audit.clone(),
            reporter,
        );
        self.tasks
            .spawn(monitor.run(self.cancel.clone(), HEALTH_PROBE_EVERY));
        if let Some((signer, dir)) = self.checkpoints {
            self.tasks.spawn(crate::audit::checkpoint::run(
                signer,
                self.state.audit.clone(),
                dir,
                self.state.checkpoint.clone(),
                self.cancel.clone(),
            ));
        }
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .tls_config(self.tls)?
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                let _ = draining_tx.send(());
            });
        tokio::pin!(server);
        // Graceful shutdown waits for every open stream (a health Watch never ends by itself),
        // so draining is bounded: after DRAIN_TIMEOUT the remaining connections are dropped.
        let result = tokio::select! {
            r = &mut server => r,
            () = async {
                if draining_rx.await.is_ok() {
                    tokio::time::sleep(DRAIN_TIMEOUT).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(timeout = ?DRAIN_TIMEOUT, "drain timeout: closing remaining connections");
                Ok(())
            }
        };
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        result.map_err(StartError::from)
    }
}

/// Reloads, while serving, what an operator may change without a restart: the Cedar policy.
/// Each part that fails to reload keeps its old state; requests are never dropped.
#[derive(Debug, Clone)]
pub struct Reloader {
    state: Arc<ApiState>,
}

/// Why one part of a reload was refused (its old state stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new policy file cannot be read, parsed or validated.
    #[error("policy.file: {0}")]
    Policy(#[from] crate::policy::PolicyError),
}

impl Reloader {
    /// Reloads every part, logs what changed, and returns the parts that were refused. Blocking
    /// (reads files): call it from `spawn_blocking`.
    pub fn reload(&self) -> Vec<ReloadError> {
        let mut refused = Vec::new();
        match self.state.policy.reload() {
            Ok(Reloaded::Replaced { old, new }) => {
                tracing::info!(old_sha256 = %old, policy_sha256 = %new, "policy reloaded");
            }
            Ok(Reloaded::Unchanged { sha256 }) => {
                tracing::info!(policy_sha256 = %sha256, "policy unchanged");
            }
            Ok(Reloaded::Builtin) => {
                tracing::info!("built-in policy in force: nothing to reload");
            }
            Err(e) => {
                tracing::error!(error = %e, "policy reload refused; the previous policy stays in force");
                refused.push(e.into());
            }
        }
        refused
    }
}

/// This replica's name in audit records: the host name (the pod name on Kubernetes).
fn replica_id() -> String {
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
