//! Operations endpoints of the side port: `/healthz` (the process answers), `/readyz` (every
//! component passed its last probe; the JSON names each one) and `/metrics` (Prometheus text).
//! Unauthenticated by design, like every health endpoint: they carry no key names, subjects or
//! error details — those are in the server log.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::health::Readiness;
use crate::metrics::Metrics;

#[derive(Clone)]
struct Ops {
    readiness: Readiness,
    metrics: Arc<Metrics>,
}

/// `/healthz`, `/readyz`, `/metrics`.
pub(crate) fn router(readiness: Readiness, metrics: Arc<Metrics>) -> axum::Router {
    axum::Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"alive": true})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Ops { readiness, metrics })
}

async fn readyz(State(ops): State<Ops>) -> Response {
    let report = ops.readiness.load_full();
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(&*report)).into_response()
}

async fn metrics_text(State(ops): State<Ops>) -> Response {
    match ops.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
