//! Start-up and serving: opens the HSMs, the catalog and the identity layer from a validated
//! config, then serves gRPC over TLS until the shutdown future resolves.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;

use crate::api::{self, ApiState};
use crate::audit::checkpoint::Signer;
use crate::audit::{AuditLog, FileAuditLog};
use crate::config::BrokerConfig;
use crate::hsm::{HsmPool, HsmSettings, TokenSelector};
use crate::identity::{Authenticator, ClientCa, IssuerSettings, JwtVerifier};
use crate::keys::clock::{Clock, SystemClock};
use crate::keys::{HsmHandle, KeyService, KeySettings, Scheduler};
use crate::policy::{PolicySlot, Reloaded};

/// How long shutdown waits for in-flight requests and open streams.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header list (all gRPC metadata) of a request: room for an attestation result.
const MAX_HEADER_LIST: u32 = 64 * 1024;
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
    #[error("{field}: {source}")]
    Store {
        /// Config field of the catalog.
        field: &'static str,
        /// Cause.
        source: crate::store::StoreError,
    },
    /// The Cedar policy failed to load or validate.
    #[error("policy.file: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// JWKS failed to load.
    #[error("identity.jwt_issuers: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// An attestation verifier's JWKS failed to load.
    #[error("attestation.verifiers: {0}")]
    Attestation(#[from] crate::attestation::AttestationError),
    /// The mTLS client CA bundle failed to load.
    #[error("identity.client_ca_file: {0}")]
    ClientCa(crate::identity::IdentityError),
    /// TLS files unreadable.
    #[error("server.tls_cert / server.tls_key: {0}")]
    Tls(std::io::Error),
    /// Reflection descriptor set broken (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The audit checkpoint key cannot be used (fail closed: no signer, no broker).
    #[error("{field}: {source}")]
    CheckpointKey {
        /// Inventory field.
        field: String,
        /// Cause.
        source: crate::audit::checkpoint::KeyError,
    },
    /// The audit log failed to open (fail closed: no audit, no broker).
    #[error("audit.dir: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Completing a key version interrupted by a crash failed.
    #[error("key recovery: {0}")]
    Recovery(crate::keys::KeyError),
    /// The HTTPS side port failed to start.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// Serving failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

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
    /// Opens everything the config names. Fails fast, naming the field, on a wrong PIN, a
    /// missing module, an unreadable JWKS or TLS file.
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start(config: &BrokerConfig) -> Result<Self, StartError> {
        Self::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Broker::start`], with the clock lifecycle deadlines run on (tests pass a
    /// [`crate::keys::clock::ManualClock`] to cross deadlines without waiting).
    ///
    /// # Errors
    /// See [`StartError`].
    pub async fn start_with_clock(
        config: &BrokerConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
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
        let catalog = crate::store::open(&config.store)
            .await
            .map_err(|(field, source)| StartError::Store { field, source })?;
        let store = catalog.store.clone();
        // Checkpoints are signed in the first HSM of the inventory (fail closed: no signer, no
        // broker). Replicas sharing a PostgreSQL log share its origin.
        let replica = config.server.replica_id.clone().unwrap_or_else(host_name);
        let origin = match &catalog.postgres {
            Some(pool) => crate::audit::pg_origin(pool).await?,
            None => format!("keybroker/{replica}/audit"),
        };
        tracing::info!(
            replica_id = replica.as_str(),
            origin = origin.as_str(),
            "audit log"
        );
        // One key signs the log for its whole life (DESIGN §10): replicas take the one recorded
        // in PostgreSQL (chosen under a cluster-wide lock on the log's first start), a single
        // node the one its audit directory's verifier key names.
        let signer = match hsms.iter().next() {
            Some((id, h)) => {
                let opened = match &catalog.postgres {
                    Some(db) => {
                        Signer::open_shared(h.pool.clone(), origin, db, &config.audit.dir, &replica)
                            .await
                    }
                    None => Signer::open_local(h.pool.clone(), origin, &config.audit.dir).await,
                };
                Some(opened.map_err(|source| StartError::CheckpointKey {
                    field: format!(
                        "{}: hsm {id}: audit checkpoint key {}",
                        config.hsm_inventory.display(),
                        crate::audit::checkpoint::KEY_LABEL
                    ),
                    source,
                })?)
            }
            None => None,
        };
        let latest = crate::audit::checkpoint::Latest::default();
        let issuers = config
            .identity
            .jwt_issuers
            .iter()
            .map(|i| IssuerSettings {
                issuer: i.issuer.clone(),
                audiences: i.audiences.clone(),
                jwks: i.jwks.clone(),
                algorithms: i.algorithms.iter().map(|a| (*a).into()).collect(),
                max_token_lifetime: i.max_token_lifetime,
                leeway: i.leeway,
                job_claim: i.job_claim.clone(),
                cluster: i.cluster.clone(),
                region: i.region.clone(),
                region_claim: i.region_claim.clone(),
                jurisdiction: i.jurisdiction.clone(),
            })
            .collect();
        let verifier = JwtVerifier::new(issuers)?;
        // A JWKS URL that does not answer does not stop the broker: its issuer's tokens are
        // refused (logged) until a fetch succeeds, and other issuers keep working.
        verifier.prefetch().await;
        let identity = Authenticator::new(
            config.identity.mode,
            verifier,
            config
                .identity
                .mtls
                .as_ref()
                .map_or(&[], |m| m.trust_domains.as_slice()),
        );
        let attestation = match &config.attestation {
            Some(a) => {
                let verifiers = crate::attestation::Attestation::new(a)?;
                // As for issuers: a JWKS URL that does not answer refuses that verifier's
                // results until a fetch succeeds; the broker starts.
                verifiers.prefetch().await;
                Some(Arc::new(verifiers))
            }
            None => None,
        };
        let client_ca = match &config.identity.mtls {
            Some(m) => Some((
                ClientCa::load(
                    &m.client_ca_file,
                    m.trust_domains.iter().map(|t| t.domain.clone()).collect(),
                )
                .map_err(StartError::ClientCa)?,
                m.client_ca_poll_interval,
            )),
            None => None,
        };
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
                default_destruction_wait: config.keys.default_destruction_wait,
                min_destruction_wait: config.keys.min_destruction_wait,
            },
            clock,
        );
        keys.recover_pending_versions()
            .await
            .map_err(StartError::Recovery)?;
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let metrics = Arc::new(crate::metrics::Metrics::new());
        metrics.replica(&replica);
        let audit: Arc<dyn AuditLog> = match &catalog.postgres {
            Some(pool) => {
                let audit = crate::audit::PgAuditLog::open(
                    pool.clone(),
                    &config.audit.dir,
                    signer.clone().map(|s| (s, latest.clone())),
                    &tasks,
                    &cancel,
                )
                .await?;
                audit.observe_commits(metrics.clone());
                Arc::new(audit)
            }
            None => {
                let audit_dir = config.audit.dir.clone();
                // The audit log is the durable record of every release: the unexpired leases
                // a crash kept from the catalog (they are written after their record) are
                // found in it and re-inserted before the broker serves.
                let now = keys.clock().now();
                let (audit, found) = tokio::task::spawn_blocking(move || {
                    let mut found = Vec::new();
                    FileAuditLog::open(&audit_dir, |r| {
                        found.extend(crate::keys::leases::from_record(r, now));
                    })
                    .map(|log| (log, found))
                })
                .await
                .map_err(|e| crate::audit::AuditError::Io {
                    what: "open",
                    path: config.audit.dir.clone(),
                    source: std::io::Error::other(e),
                })??;
                crate::keys::leases::replay(keys.store().as_ref(), &found)
                    .await
                    .map_err(|source| StartError::Store {
                        field: "store.sqlite_path",
                        source,
                    })?;
                audit.observe_commits(metrics.clone());
                Arc::new(audit)
            }
        };
        let tls = crate::tls::server_config(
            &config.server.tls_cert,
            &config.server.tls_key,
            client_ca.as_ref().map(|(ca, _)| ca.verifier()),
            crate::tls::ALPN_GRPC,
        )
        .map_err(StartError::Tls)?;
        let side_port = match &config.http {
            Some(http) => Some(SidePort {
                listener: TcpListener::bind(http.listen).await.map_err(|source| {
                    crate::http::HttpError::Bind {
                        addr: http.listen,
                        source,
                    }
                })?,
                tls: if http.tls {
                    // Client certificates are asked for (not required: load balancers probe
                    // /readyz without one) when the transit endpoint authenticates by them.
                    let client_auth = client_ca
                        .as_ref()
                        .filter(|_| {
                            http.transit
                                .as_ref()
                                .is_some_and(|t| t.auth.needs_certificate())
                        })
                        .map(|(ca, _)| ca.optional_verifier());
                    Some(
                        crate::tls::server_config(
                            &config.server.tls_cert,
                            &config.server.tls_key,
                            client_auth,
                            crate::tls::ALPN_HTTP,
                        )
                        .map_err(|e| crate::http::HttpError::Tls(e.to_string()))?,
                    )
                } else {
                    None
                },
                transit: http.transit.clone(),
                xks: match &http.xks {
                    None => None,
                    Some(x) => Some(XksPort {
                        stores: crate::http::xks::Stores::load(x)
                            .map_err(crate::http::HttpError::Xks)?,
                        own: match x.listen {
                            None => None,
                            Some(addr) => Some((
                                TcpListener::bind(addr).await.map_err(|source| {
                                    crate::http::HttpError::Bind { addr, source }
                                })?,
                                crate::tls::server_config(
                                    &config.server.tls_cert,
                                    &config.server.tls_key,
                                    crate::http::xks::client_verifier(x)
                                        .map_err(crate::http::HttpError::Xks)?,
                                    crate::tls::ALPN_HTTP,
                                )
                                .map_err(|e| crate::http::HttpError::Tls(e.to_string()))?,
                            )),
                        },
                    }),
                },
            }),
            None => None,
        };
        Ok(Self {
            state: Arc::new(ApiState {
                keys,
                identity,
                audit,
                replica_id: replica,
                policy,
                residency: config.residency.clone(),
                metrics,
                checkpoint: latest,
                attestation,
            }),
            checkpoints: signer.map(|s| (s, config.audit.dir.clone())),
            postgres: catalog.postgres,
            side_port,
            tls,
            client_ca,
            tasks,
            cancel,
        })
    }

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
        let readiness: crate::health::Readiness = Arc::default();
        let routes = api::services(self.state.clone(), health)?;
        let monitor = crate::health::Monitor::new(
            self.state.keys.clone(),
            self.state.audit.clone(),
            reporter,
            self.state.metrics.clone(),
            readiness.clone(),
        );
        self.tasks
            .spawn(monitor.run(self.cancel.clone(), HEALTH_PROBE_EVERY));
        let scheduler = Scheduler::new(
            self.state.keys.clone(),
            self.state.audit.clone(),
            self.state.replica_id.clone(),
        );
        self.tasks.spawn(scheduler.run(self.cancel.clone()));
        self.tasks.spawn(crate::http::sampler::run(
            self.state.clone(),
            self.cancel.clone(),
            HEALTH_PROBE_EVERY,
        ));
        if let (Some((signer, dir)), Some(pool)) = (self.checkpoints.clone(), &self.postgres) {
            // One publisher among the replicas: the holder of the advisory lock signs.
            let _ = dir;
            self.tasks.spawn(crate::audit::lead_pg_publisher(
                pool.clone(),
                self.state.replica_id.clone(),
                signer,
                self.state.audit.clone(),
                self.cancel.clone(),
            ));
        } else if let Some((signer, dir)) = self.checkpoints {
            self.tasks.spawn(crate::audit::checkpoint::run(
                signer,
                self.state.audit.clone(),
                crate::audit::checkpoint::Sink::Dir(dir),
                self.state.checkpoint.clone(),
                self.cancel.clone(),
            ));
        }
        if let Some(side) = self.side_port {
            let mut router = crate::http::ops_router(readiness, self.state.metrics.clone());
            if let Some(t) = side.transit {
                router = router.merge(crate::http::transit::router(self.state.clone(), t));
            }
            match side.xks {
                Some(XksPort {
                    stores,
                    own: Some((listener, tls)),
                }) => {
                    self.tasks.spawn(crate::http::serve(
                        listener,
                        Some(tls),
                        crate::http::xks::router(self.state.clone(), stores),
                        self.cancel.clone(),
                    ));
                }
                Some(XksPort { stores, own: None }) => {
                    router = router.merge(crate::http::xks::router(self.state.clone(), stores));
                }
                None => {}
            }
            self.tasks.spawn(crate::http::serve(
                side.listener,
                side.tls,
                router,
                self.cancel.clone(),
            ));
        }
        self.state
            .identity
            .jwt()
            .spawn_refresh(&self.tasks, &self.cancel);
        if let Some(a) = &self.state.attestation {
            a.spawn_refresh(&self.tasks, &self.cancel);
        }
        if let Some((ca, every)) = &self.client_ca {
            self.tasks
                .spawn(ca.clone().watch(*every, self.cancel.clone()));
        }
        let incoming = crate::tls::incoming(listener, self.tls, &self.tasks, self.cancel.clone());
        let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            // Attestation results travel in metadata and run to tens of KiB (hyper's default
            // header list limit is 16 KiB); each is still capped by its verifier's limit.
            .http2_max_header_list_size(MAX_HEADER_LIST)
            .layer(crate::api::request_span::RequestSpanLayer)
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
        // Lease rows of the releases answered so far, before the process goes (a kill skips
        // this; the next start re-inserts them from the audit log).
        self.state.keys.leases().flush().await;
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        result.map_err(StartError::from)
    }
}

/// Reloads, while serving, what an operator may change without a restart: the Cedar policy and
/// the mTLS client CA bundle. Each part that fails to reload keeps its old state; requests are
/// never dropped.
#[derive(Debug, Clone)]
pub struct Reloader {
    state: Arc<ApiState>,
    client_ca: Option<Arc<ClientCa>>,
}

/// Why one part of a reload was refused (its old state stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new policy file cannot be read, parsed or validated.
    #[error("policy.file: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// The new client CA bundle cannot be read or holds no usable CA certificate.
    #[error("identity.client_ca_file: {0}")]
    ClientCa(#[source] crate::identity::IdentityError),
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
        // `ClientCa::reload` logs a replacement or a refusal (the old bundle stays).
        match self.client_ca.as_ref().map(|ca| ca.reload()) {
            Some(Ok(crate::identity::Reloaded::Unchanged)) => {
                tracing::info!("client CA bundle unchanged");
            }
            Some(Err(e)) => refused.push(ReloadError::ClientCa(e)),
            Some(Ok(crate::identity::Reloaded::Replaced(_))) | None => {}
        }
        refused
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
