//! The metrics sampler: once a second it copies the counters kept where the work happens (HSM
//! session pools, JWKS caches, the catalog) into [`crate::metrics::Metrics`]. Pulling keeps
//! metric code and label lookups off the hot paths; counters are totals, so a missed tick
//! loses nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::ApiState;

/// Samples every `every` until `cancel`.
pub(crate) async fn run(state: Arc<ApiState>, cancel: CancellationToken, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        sample(&state).await;
    }
}

async fn sample(state: &ApiState) {
    for hsm in state.keys.hsms() {
        state.metrics.hsm_pool(hsm.pool.id(), &hsm.pool.snapshot());
    }
    for (issuer, fetches, failures) in state.identity.jwt().jwks_stats() {
        state.metrics.jwks(&issuer, fetches, failures);
    }
    let now = state.keys.clock().now();
    match state.keys.store().gauges(now).await {
        Ok(gauges) => state.metrics.catalog(&gauges),
        // The health monitor reports an unreachable catalog; a stale gauge is all this costs.
        Err(e) => tracing::debug!(error = %e, "metrics: catalog counts unavailable"),
    }
}
