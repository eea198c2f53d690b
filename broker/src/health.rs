//! Readiness: a monitor probes every HSM, the catalog and the audit log, and drives
//! `grpc.health.v1.Health`, the side port's `/readyz` (a [`ReadinessReport`] naming each
//! component) and the readiness metrics — one probe, three views that cannot disagree.
//!
//! NOT_SERVING while any HSM is unreachable, the catalog is down or the audit log is poisoned; the HSM probe also lets the
//! pool re-initialize by itself, so serving resumes when the device returns. The audit log is
//! not left to the next probe: it calls the monitor's hook as it poisons, before it refuses
//! anything, so no caller is refused while health still says SERVING.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::audit::AuditLog;
use crate::keys::KeyService;
use crate::metrics::Metrics;

/// The state of one component at the last probe. `problem` is a short fixed phrase; the
/// detail is in the server log (the side port may be reachable by more people than the logs).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Component {
    pub(crate) ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) problem: Option<&'static str>,
}

/// The last probe's result, per component (`hsm:<id>`, `catalog`, `audit`).
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub(crate) struct ReadinessReport {
    /// Every component ready (false until the first probe has run).
    pub(crate) ready: bool,
    pub(crate) components: BTreeMap<String, Component>,
}

/// Shared between the monitor (writer) and the side port (reader).
pub(crate) type Readiness = Arc<ArcSwap<ReadinessReport>>;

fn component(ok: bool, problem: &'static str) -> Component {
    Component {
        ready: ok,
        problem: (!ok).then_some(problem),
    }
}

/// Service names whose health is reported (besides the server-wide "").
const SERVICES: [&str; 3] = [
    "keybroker.v1.DataKeys",
    "keybroker.v1.KeyAdmin",
    "keybroker.v1.Signing",
];

/// Sets the server-wide status and every service's.
async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for s in SERVICES {
        reporter.set_service_status(s, status).await;
    }
}

pub(crate) struct Monitor {
    keys: KeyService,
    audit: Arc<dyn AuditLog>,
    reporter: HealthReporter,
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

impl Monitor {
    pub(crate) fn new(
        keys: KeyService,
        audit: Arc<dyn AuditLog>,
        reporter: HealthReporter,
        metrics: Arc<Metrics>,
        readiness: Readiness,
    ) -> Self {
        Self {
            keys,
            audit,
            reporter,
            metrics,
            readiness,
        }
    }

    async fn probe(&self) -> bool {
        let mut components = BTreeMap::new();
        for hsm in self.keys.hsms() {
            let ok = match hsm.pool.check().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(hsm = hsm.pool.id(), error = %e, "HSM health probe failed");
                    false
                }
            };
            self.metrics
                .hsm_sessions(hsm.pool.id(), hsm.pool.sessions_in_use());
            components.insert(
                format!("hsm:{}", hsm.pool.id()),
                component(ok, "HSM unreachable or not logged in"),
            );
        }
        let ok = match self.keys.store().ping().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "catalog health probe failed");
                false
            }
        };
        components.insert("catalog".to_owned(), component(ok, "catalog unreachable"));
        let ok = self.audit.healthy();
        if !ok {
            tracing::warn!(
                "audit log unhealthy: refusing key operations (a poisoned file log until \
                 restart; the PostgreSQL log until the database commits again)"
            );
        }
        components.insert(
            "audit".to_owned(),
            component(
                ok,
                "audit log not writable: refusing key operations (the file log until restart, \
                 the PostgreSQL log until the database commits again)",
            ),
        );
        for (name, c) in &components {
            self.metrics.component(name, c.ready);
        }
        let ready = components.values().all(|c| c.ready);
        self.readiness
            .store(Arc::new(ReadinessReport { ready, components }));
        ready
    }

    async fn set(&self, status: ServingStatus) {
        set_all(&self.reporter, status).await;
    }

    /// Flips every view to not ready from the audit writer's thread, in the event that
    /// poisons the log and before any call is refused (the next probe agrees).
    fn watch_audit(&self) {
        let (reporter, readiness, metrics) = (
            self.reporter.clone(),
            self.readiness.clone(),
            self.metrics.clone(),
        );
        let runtime = tokio::runtime::Handle::current();
        self.audit.on_unhealthy(Arc::new(move || {
            tracing::warn!(
                "audit log unhealthy: NOT_SERVING, refusing key operations until restart"
            );
            let mut report = ReadinessReport::clone(&readiness.load());
            report.components.insert(
                "audit".to_owned(),
                component(
                    false,
                    "audit log not writable: refusing key operations until restart",
                ),
            );
            report.ready = false;
            readiness.store(Arc::new(report));
            metrics.component("audit", false);
            // The writer is a plain thread, outside the runtime: blocking on it is allowed.
            runtime.block_on(set_all(&reporter, ServingStatus::NotServing));
        }));
    }

    pub(crate) async fn run(self, cancel: CancellationToken, every: Duration) {
        self.watch_audit();
        let mut last = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let ok = self.probe().await;
            if last != Some(ok) {
                if ok {
                    tracing::info!("ready: HSMs and catalog reachable");
                } else {
                    tracing::warn!("not ready: NOT_SERVING until HSMs and catalog recover");
                }
                self.set(if ok {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                })
                .await;
                last = Some(ok);
            }
        }
        self.set(ServingStatus::NotServing).await;
        self.readiness.store(Arc::new(ReadinessReport::default()));
    }
}
