//! The request span: a tower layer in front of every gRPC service that gives each request its
//! id before anything else runs — the caller's `x-request-id` when well-formed, else a fresh
//! UUID written into the header — and runs the request inside
//! `request{method=…, request_id=…}`. So every log line of a request names the id, and the
//! handlers (`RequestId::from_request`) see the same id and put it in the audit record.

use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderValue, Request};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

use super::REQUEST_ID_HEADER;

/// Longest caller-chosen request id kept.
const MAX_LEN: usize = 64;

/// Whether a caller's request id is kept: 1..=64 bytes of `[A-Za-z0-9_-]` (it goes into logs,
/// audit records and response headers).
pub(crate) fn well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Adds [`RequestSpan`] around a service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestSpanLayer;

impl<S> Layer<S> for RequestSpanLayer {
    type Service = RequestSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestSpan { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct RequestSpan<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RequestSpan<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let given = req
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| well_formed(v))
            .map(str::to_owned);
        let id = given.unwrap_or_else(|| {
            let fresh = uuid::Uuid::new_v4().to_string();
            if let Ok(v) = HeaderValue::from_str(&fresh) {
                req.headers_mut().insert(REQUEST_ID_HEADER, v);
            }
            fresh
        });
        // Error level: the span is on whenever any event of the request is logged.
        let span = tracing::error_span!(
            "request",
            method = %req.uri().path(),
            request_id = %id,
        );
        let future = span.in_scope(|| self.inner.call(req));
        future.instrument(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_kept() {
        assert!(well_formed("abc-123_X"));
        assert!(!well_formed(""));
        assert!(!well_formed(&"a".repeat(65)));
        assert!(!well_formed("a b"));
        assert!(!well_formed("a\nb"));
        assert!(!well_formed("id\u{1b}[31m"));
    }
}
