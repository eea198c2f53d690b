//! Prometheus metrics (`prometheus-client`), served as text on the side port's `/metrics`.
//! One [`Metrics`] per broker, shared by the rooms that count: the API (requests, latency,
//! policy decisions) and the health monitor (readiness, HSM sessions). Labels carry only
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

/// Every metric of the broker.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    decisions: Family<OutcomeLabels, Counter>,
    ready: Family<ComponentLabels, Gauge>,
    sessions_in_use: Family<HsmLabels, Gauge>,
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
        Self {
            registry,
            requests,
            latency,
            decisions,
            ready,
            sessions_in_use,
        }
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
}
