//! `GetHealthStatus` (XKS spec): SigV4-authenticated, never policy-checked, not a key
//! operation (logged, not audited). Every HSM of the pool is probed as `/readyz` does, each
//! within a budget well under KMS's 250 ms timeout: `ACTIVE` when it answers in time,
//! `DEGRADED` when it answers slowly, `UNAVAILABLE` when it fails or does not answer. With no
//! HSM able to serve, the answer is InternalException (the spec's key-manager failure).

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;

use crate::api::ApiState;

use super::ops::Call;
use super::wire::{self, MetadataBody, XksError};

/// A probe slower than this reports `DEGRADED`.
const SLOW: Duration = Duration::from_millis(50);
/// A probe that has not answered by then reports `UNAVAILABLE`.
const GIVE_UP: Duration = Duration::from_millis(150);
/// The spec allows at most ten fleet entries.
const MAX_FLEET: usize = 10;

pub(super) async fn health(state: &ApiState, call: Call<'_>) -> Response {
    let body: Option<MetadataBody> = serde_json::from_slice(call.body).ok();
    let rid = body
        .as_ref()
        .and_then(|b| b.request_metadata.as_ref())
        .and_then(|m| m.kms_request_id.clone());
    if let Err(why) = &call.auth {
        tracing::info!(key_store = %call.store.uri_prefix, reason = why, "XKS health: request refused");
        return XksError::authentication("request signature is not valid").response(rid.as_deref());
    }
    let Some(m) = body.and_then(|b| b.request_metadata) else {
        return XksError::validation("requestMetadata is required").response(rid.as_deref());
    };
    if let Err(e) = m.check(false, false) {
        return e.response(rid.as_deref());
    }
    let probes = state.keys.hsms().take(MAX_FLEET).map(|hsm| async move {
        let started = Instant::now();
        let status = match tokio::time::timeout(GIVE_UP, hsm.pool.check()).await {
            Ok(Ok(())) if started.elapsed() <= SLOW => "ACTIVE",
            Ok(Ok(())) => "DEGRADED",
            Ok(Err(e)) => {
                tracing::warn!(hsm = hsm.pool.id(), error = %e, "XKS health: HSM probe failed");
                "UNAVAILABLE"
            }
            Err(_) => "UNAVAILABLE",
        };
        serde_json::json!({
            "id": hsm.pool.id(),
            "model": format!("PKCS#11 HSM, jurisdiction {}, region {}", hsm.jurisdiction, hsm.region),
            "healthStatus": status,
        })
    });
    let fleet: Vec<serde_json::Value> = futures_util::future::join_all(probes).await;
    let serving = fleet.iter().any(|h| h["healthStatus"] != "UNAVAILABLE");
    tracing::info!(key_store = %call.store.uri_prefix, kms_request_id = rid.as_deref().unwrap_or_default().escape_debug().to_string(),
        hsms = fleet.len(), serving, "XKS health");
    if !serving {
        return XksError::internal("no HSM of the key manager can serve").response(rid.as_deref());
    }
    let body = serde_json::json!({
        "xksProxyFleetSize": 1,
        "xksProxyVendor": "keybroker",
        "xksProxyModel": format!("keybroker {}", env!("CARGO_PKG_VERSION")),
        "ekmVendor": "PKCS#11 HSM pool (keybroker)",
        "ekmFleetDetails": fleet,
    });
    wire::json(StatusCode::OK, &body, rid.as_deref())
}
