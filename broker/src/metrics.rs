//! Prometheus metrics (`prometheus-client`), served as text on the side port's `/metrics`.
//! One [`Metrics`] per broker, shared by the rooms that count: the API (requests, latency,
//! policy decisions), the health monitor (readiness), the audit writer (commit batch size and
//! latency, pushed per commit) and the sampler in `http/sampler.rs` (HSM pools, JWKS fetches, leases,
//! keys by state: pulled once a second from counters kept where the work happens). Labels carry only
//! bounded values (method and code names, HSM ids from the config, outcomes): never a key
//! name, subject or token, which would leak and explode cardinality.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    surface: &'static str,
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HsmLabels {
    hsm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HsmErrorLabels {
    hsm: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica_id: String,
}

/// Raises `counter` to `total` (a monotonic total kept elsewhere).
fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// Every metric of the broker.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    decisions: Family<OutcomeLabels, Counter>,
    ready: Family<ComponentLabels, Gauge>,
    sessions_in_use: Family<HsmLabels, Gauge>,
    sessions_idle: Family<HsmLabels, Gauge>,
    session_waits: Family<HsmLabels, Counter>,
    hsm_errors: Family<HsmErrorLabels, Counter>,
    audit_batch: Histogram,
    audit_commit: Histogram,
    jwks_fetches: Family<IssuerLabels, Counter>,
    jwks_failures: Family<IssuerLabels, Counter>,
    leases_active: Gauge,
    keys: Family<StateLabels, Gauge>,
    replica: Family<ReplicaLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keybroker");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Key operations by surface, method and result code (every one is also in the audit log)",
            requests.clone(),
        );
        // 100 µs .. ~3.3 s.
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its durable audit record",
            latency.clone(),
        );
        let decisions = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "policy_decisions",
            "Residency guard and Cedar policy decisions by outcome",
            decisions.clone(),
        );
        let ready = Family::<ComponentLabels, Gauge>::default();
        registry.register(
            "component_ready",
            "1 when the component (HSM, catalog, audit log) passed its last probe",
            ready.clone(),
        );
        let sessions_in_use = Family::<HsmLabels, Gauge>::default();
        registry.register(
            "hsm_sessions_in_use",
            "HSM pool sessions in use at the last probe",
            sessions_in_use.clone(),
        );
        let sessions_idle = Family::<HsmLabels, Gauge>::default();
        registry.register(
            "hsm_sessions_idle",
            "Open HSM sessions waiting in the pool",
            sessions_idle.clone(),
        );
        let session_waits = Family::<HsmLabels, Counter>::default();
        registry.register(
            "hsm_session_waits",
            "Calls that found every pooled HSM session taken and had to wait",
            session_waits.clone(),
        );
        let hsm_errors = Family::<HsmErrorLabels, Counter>::default();
        registry.register(
            "hsm_errors",
            "Failed PKCS#11 calls by HSM and return code (CKR_...)",
            hsm_errors.clone(),
        );
        let audit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        registry.register(
            "audit_commit_batch_records",
            "Records made durable by one audit group commit",
            audit_batch.clone(),
        );
        // 50 µs .. ~1.6 s.
        let audit_commit = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "audit_commit_duration_seconds",
            "Time of one audit group commit (write + fdatasync, or one PostgreSQL transaction)",
            audit_commit.clone(),
        );
        let jwks_fetches = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "JWKS fetch attempts by issuer",
            jwks_fetches.clone(),
        );
        let jwks_failures = Family::<IssuerLabels, Counter>::default();
        registry.register(
            "jwks_fetch_failures",
            "Failed JWKS fetches by issuer (the last good key set stays in use)",
            jwks_failures.clone(),
        );
        let leases_active = Gauge::default();
        registry.register(
            "leases_active",
            "Leases whose expiry is still ahead",
            leases_active.clone(),
        );
        let keys = Family::<StateLabels, Gauge>::default();
        registry.register("keys", "Keys in the catalog by state", keys.clone());
        // Every state is present from the start, so a dashboard never sees a gap.
        for state in ["ENABLED", "DISABLED", "PENDING_DESTRUCTION", "DESTROYED"] {
            let _created = keys.get_or_create(&StateLabels {
                state: state.to_owned(),
            });
        }
        let replica = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            "replica_info",
            "1, labelled with this broker's replica_id (the name in its audit records)",
            replica.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            decisions,
            ready,
            sessions_in_use,
            sessions_idle,
            session_waits,
            hsm_errors,
            audit_batch,
            audit_commit,
            jwks_fetches,
            jwks_failures,
            leases_active,
            keys,
            replica,
        }
    }

    /// Names this broker: `keybroker_replica_info{replica_id="…"} 1` (one id per process).
    pub(crate) fn replica(&self, replica_id: &str) {
        self.replica
            .get_or_create(&ReplicaLabels {
                replica_id: replica_id.to_owned(),
            })
            .set(1);
    }

    /// One finished request: `code` is `ok` or the snake-case gRPC code name.
    pub(crate) fn request(&self, surface: &'static str, method: &str, code: &str, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                surface,
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// One authorization decision.
    pub(crate) fn decision(&self, outcome: &'static str) {
        self.decisions
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The result of a component probe.
    pub(crate) fn component(&self, component: &str, ok: bool) {
        self.ready
            .get_or_create(&ComponentLabels {
                component: component.to_owned(),
            })
            .set(i64::from(ok));
    }

    /// Sessions in use in one HSM's pool.
    pub(crate) fn hsm_sessions(&self, hsm: &str, in_use: usize) {
        self.sessions_in_use
            .get_or_create(&HsmLabels {
                hsm: hsm.to_owned(),
            })
            .set(i64::try_from(in_use).unwrap_or(i64::MAX));
    }

    /// One HSM pool's sessions, waits and failures (totals since start).
    pub(crate) fn hsm_pool(&self, hsm: &str, pool: &crate::hsm::PoolSnapshot) {
        let label = HsmLabels {
            hsm: hsm.to_owned(),
        };
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.sessions_in_use
            .get_or_create(&label)
            .set(gauge(pool.in_use));
        self.sessions_idle
            .get_or_create(&label)
            .set(gauge(pool.idle));
        catch_up(&self.session_waits.get_or_create(&label), pool.waits);
        for (code, n) in &pool.errors {
            let labels = HsmErrorLabels {
                hsm: hsm.to_owned(),
                code: code.clone(),
            };
            catch_up(&self.hsm_errors.get_or_create(&labels), *n);
        }
    }

    /// One issuer's JWKS fetch attempts and failures (totals since start).
    pub(crate) fn jwks(&self, issuer: &str, fetches: u64, failures: u64) {
        let label = IssuerLabels {
            issuer: issuer.to_owned(),
        };
        catch_up(&self.jwks_fetches.get_or_create(&label), fetches);
        catch_up(&self.jwks_failures.get_or_create(&label), failures);
    }

    /// Catalog counts: keys by state (absent states are 0) and unexpired leases.
    pub(crate) fn catalog(&self, gauges: &crate::store::CatalogGauges) {
        for state in ["ENABLED", "DISABLED", "PENDING_DESTRUCTION", "DESTROYED"] {
            let n = gauges
                .keys_by_state
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            self.keys
                .get_or_create(&StateLabels {
                    state: state.to_owned(),
                })
                .set(n);
        }
        if let Some(n) = gauges.active_leases {
            self.leases_active.set(n);
        }
    }

    /// The text exposition format.
    ///
    /// # Errors
    /// Formatting failures (not expected).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl crate::audit::CommitObserver for Metrics {
    fn committed(&self, records: usize, took: Duration) {
        #[allow(
            clippy::cast_precision_loss,
            reason = "a batch is at most a few thousand"
        )]
        self.audit_batch.observe(records as f64);
        self.audit_commit.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_appear_in_the_text_format() {
        let m = Metrics::new();
        m.request("grpc", "GenerateDataKey", "ok", Duration::from_millis(2));
        m.request(
            "grpc",
            "GenerateDataKey",
            "permission_denied",
            Duration::from_millis(1),
        );
        m.decision("deny");
        m.component("audit", false);
        let text = m.encode().unwrap();
        assert!(text.contains(
            "keybroker_requests_total{surface=\"grpc\",method=\"GenerateDataKey\",code=\"ok\"} 1"
        ), "{text}");
        assert!(
            text.contains("keybroker_policy_decisions_total{outcome=\"deny\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("keybroker_component_ready{component=\"audit\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("keybroker_request_duration_seconds_count{method=\"GenerateDataKey\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn sampled_totals_become_monotonic_counters() {
        let m = Metrics::new();
        let mut pool = crate::hsm::PoolSnapshot {
            in_use: 1,
            idle: 3,
            waits: 5,
            ..Default::default()
        };
        pool.errors.insert("CKR_DEVICE_REMOVED".into(), 2);
        m.hsm_pool("eu-1", &pool);
        pool.waits = 7;
        m.hsm_pool("eu-1", &pool);
        m.jwks("https://issuer", 3, 1);
        m.jwks("https://issuer", 2, 1); // a lower total never lowers the counter
        m.catalog(&crate::store::CatalogGauges {
            keys_by_state: vec![("ENABLED".into(), 4)],
            active_leases: Some(9),
        });
        crate::audit::CommitObserver::committed(&m, 12, Duration::from_millis(3));
        m.replica("keybroker-1");
        let text = m.encode().unwrap();
        for line in [
            "keybroker_hsm_sessions_idle{hsm=\"eu-1\"} 3",
            "keybroker_hsm_session_waits_total{hsm=\"eu-1\"} 7",
            "keybroker_hsm_errors_total{hsm=\"eu-1\",code=\"CKR_DEVICE_REMOVED\"} 2",
            "keybroker_jwks_fetches_total{issuer=\"https://issuer\"} 3",
            "keybroker_jwks_fetch_failures_total{issuer=\"https://issuer\"} 1",
            "keybroker_keys{state=\"ENABLED\"} 4",
            "keybroker_keys{state=\"DESTROYED\"} 0",
            "keybroker_leases_active 9",
            "keybroker_audit_commit_batch_records_count 1",
            "keybroker_audit_commit_duration_seconds_count 1",
            "keybroker_replica_info{replica_id=\"keybroker-1\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
