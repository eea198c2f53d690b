//! JWKS from a URL end to end: the dev issuer's keys served by a small HTTP server in the test.
//! A working endpoint lets tokens through; an endpoint that fails at start-up does not stop
//! the broker, but that issuer's tokens are refused (UNAUTHENTICATED, reason in the log).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keybroker_broker::config::JwksSource;
use keybroker_client::{ClientError, KeyPurpose};
use softhsm_tests::broker::TestBroker;
use tonic::Code;

struct Srv {
    hits: AtomicU64,
    body: Mutex<Option<String>>,
}

async fn jwks(State(s): State<Arc<Srv>>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    match s.body.lock().unwrap().clone() {
        Some(b) => ([("cache-control", "max-age=300")], b).into_response(),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// A broker whose dev issuer's keys come from a local URL; `serve` says whether that URL
/// answers with them (or with 500).
async fn broker(serve: bool) -> (TestBroker, Arc<Srv>) {
    let srv = Arc::new(Srv {
        hits: AtomicU64::new(0),
        body: Mutex::new(None),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/jwks", axum::routing::get(jwks))
        .with_state(srv.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s = srv.clone();
    let b = TestBroker::start_with(move |c| {
        let issuer = &mut c.identity.jwt_issuers[0];
        if let JwksSource::File(path) = &issuer.jwks
            && serve
        {
            *s.body.lock().unwrap() = Some(std::fs::read_to_string(path).unwrap());
        }
        issuer.jwks = JwksSource::Url { url, ca_file: None };
    })
    .await
    .unwrap();
    (b, srv)
}

#[tokio::test]
async fn tokens_verify_against_keys_fetched_from_a_jwks_url() {
    let (b, srv) = broker(true).await;
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1, "fetched once at start");
    let c = b.client().await.unwrap();
    c.create_key(
        "datasets/jwks-url",
        KeyPurpose::DataKey,
        &BTreeMap::new(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1, "served from the cache");
    b.stop().await.unwrap();
}

#[tokio::test]
async fn broker_starts_when_the_jwks_url_fails_and_refuses_that_issuers_tokens() {
    let (b, srv) = broker(false).await;
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
    let c = b.client().await.unwrap();
    let r = c
        .create_key(
            "datasets/jwks-down",
            KeyPurpose::DataKey,
            &BTreeMap::new(),
            None,
        )
        .await;
    match r {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, Code::Unauthenticated);
            assert_eq!(
                message, "invalid token",
                "the reason stays in the server log"
            );
        }
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
    // Within the cooldown of the failed start-up fetch: no refetch per request.
    assert_eq!(srv.hits.load(Ordering::SeqCst), 1);
    b.stop().await.unwrap();
}
