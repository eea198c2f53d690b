//! Readiness: a monitor probes every HSM and the catalog and drives `grpc.health.v1.Health`.
//!
//! NOT_SERVING while any HSM is unreachable, the catalog is down or the audit log is poisoned; the HSM probe also lets the
//! pool re-initialize by itself, so serving resumes when the device returns.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::audit::AuditLog;
use crate::keys::KeyService;

/// Service names whose health is reported (besides the server-wide "").
const SERVICES: [&str; 2] = ["keybroker.v1.DataKeys", "keybroker.v1.KeyAdmin"];

pub(crate) struct Monitor {
    keys: KeyService,
    audit: Arc<dyn AuditLog>,
    reporter: HealthReporter,
}

impl Monitor {
    pub(crate) fn new(
        keys: KeyService,
        audit: Arc<dyn AuditLog>,
        reporter: HealthReporter,
    ) -> Self {
        Self {
            keys,
            audit,
            reporter,
        }
    }

    async fn probe(&self) -> bool {
        let mut ok = true;
        for hsm in self.keys.hsms() {
            if let Err(e) = hsm.pool.check().await {
                tracing::warn!(hsm = hsm.pool.id(), error = %e, "HSM health probe failed");
                ok = false;
            }
        }
        if let Err(e) = self.keys.store().ping().await {
            tracing::warn!(error = %e, "catalog health probe failed");
            ok = false;
        }
        if !self.audit.healthy() {
            tracing::warn!("audit log unhealthy: refusing key operations until restart");
            ok = false;
        }
        ok
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for s in SERVICES {
            self.reporter.set_service_status(s, status).await;
        }
    }

    pub(crate) async fn run(self, cancel: CancellationToken, every: Duration) {
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
    }
}
