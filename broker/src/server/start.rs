//! Start-up: opens the HSMs, the catalog, the audit log and its signer, the identity and
//! attestation layers and the listeners from a validated config, in that order, failing fast
//! with the config field that is wrong.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Broker, SidePort, StartError, XksPort, host_name};
use crate::api::ApiState;
use crate::audit::checkpoint::Signer;
use crate::audit::{AuditLog, FileAuditLog};
use crate::config::BrokerConfig;
use crate::hsm::{HsmPool, HsmSettings, TokenSelector};
use crate::identity::{Authenticator, ClientCa, IssuerSettings, JwtVerifier};
use crate::keys::clock::{Clock, SystemClock};
use crate::keys::{HsmHandle, KeyService, KeySettings};
use crate::policy::PolicySlot;

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
        let hsms = connect_hsms(config).await?;
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
        let signer = open_signer(config, &hsms, &catalog, origin, &replica).await?;
        let latest = crate::audit::checkpoint::Latest::default();
        let identity = authenticator(config).await?;
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
        let audit = open_audit(
            config,
            &catalog,
            &keys,
            signer.clone().map(|s| (s, latest.clone())),
            &metrics,
            &tasks,
            &cancel,
        )
        .await?;
        let tls = crate::tls::server_config(
            &config.server.tls_cert,
            &config.server.tls_key,
            client_ca.as_ref().map(|(ca, _)| ca.verifier()),
            crate::tls::ALPN_GRPC,
        )
        .map_err(StartError::Tls)?;
        let side_port = match &config.http {
            Some(http) => Some(bind_side_port(config, http, client_ca.as_ref()).await?),
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
}

/// Logs in to every HSM of the inventory, naming the inventory field of a failure.
async fn connect_hsms(config: &BrokerConfig) -> Result<BTreeMap<String, HsmHandle>, StartError> {
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
    Ok(hsms)
}

/// The checkpoint signer, in the first HSM of the inventory (fail closed: no signer, no broker).
/// One key signs the log for its whole life (DESIGN §10): replicas take the one recorded in
/// PostgreSQL (chosen under a cluster-wide lock on the log's first start), a single node the one
/// its audit directory's verifier key names.
async fn open_signer(
    config: &BrokerConfig,
    hsms: &BTreeMap<String, HsmHandle>,
    catalog: &crate::store::Opened,
    origin: String,
    replica: &str,
) -> Result<Option<Signer>, StartError> {
    let signer = match hsms.iter().next() {
        Some((id, h)) => {
            let opened = match &catalog.postgres {
                Some(db) => {
                    Signer::open_shared(h.pool.clone(), origin, db, &config.audit.dir, replica)
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
    Ok(signer)
}

/// The JWT issuers and the mTLS trust domains, as `[identity]` says.
async fn authenticator(config: &BrokerConfig) -> Result<Authenticator, StartError> {
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
    Ok(identity)
}

/// The audit log: PostgreSQL for replicas, the local segment files otherwise. A single node
/// rebuilds, from the log, the lease rows a crash kept from the catalog.
async fn open_audit(
    config: &BrokerConfig,
    catalog: &crate::store::Opened,
    keys: &KeyService,
    publisher: Option<(Signer, crate::audit::checkpoint::Latest)>,
    metrics: &Arc<crate::metrics::Metrics>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<Arc<dyn AuditLog>, StartError> {
    let audit: Arc<dyn AuditLog> = match &catalog.postgres {
        Some(pool) => {
            let audit = crate::audit::PgAuditLog::open(
                pool.clone(),
                &config.audit.dir,
                publisher,
                tasks,
                cancel,
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
    Ok(audit)
}

/// The HTTPS side port, bound now so its address is known before serving.
async fn bind_side_port(
    config: &BrokerConfig,
    http: &crate::config::HttpConfig,
    client_ca: Option<&(Arc<ClientCa>, Duration)>,
) -> Result<SidePort, StartError> {
    Ok(SidePort {
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
                stores: crate::http::xks::Stores::load(x).map_err(crate::http::HttpError::Xks)?,
                own: match x.listen {
                    None => None,
                    Some(addr) => Some((
                        TcpListener::bind(addr)
                            .await
                            .map_err(|source| crate::http::HttpError::Bind { addr, source })?,
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
    })
}
