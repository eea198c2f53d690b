//! The Vault/OpenBao transit-compatible seal endpoint: what `seal "transit"` calls.
//!
//! - `PUT|POST /v1/<mount>/encrypt/<key>` `{"plaintext": b64}` →
//!   `{"data": {"ciphertext": "vault:v<N>:<b64 envelope>", "key_version": N}}`
//! - `PUT|POST /v1/<mount>/decrypt/<key>` `{"ciphertext": "vault:v<N>:…"}` →
//!   `{"data": {"plaintext": b64}}`
//! - `PUT|POST /v1/auth/token/renew-self` → a token lease (keybroker tokens do not expire).
//!
//! Callers authenticate by `X-Vault-Token` (`auth = "token"`, the default), by an X.509-SVID
//! client certificate (`"mtls"`), or both (`"both"`: the token names the principal, the
//! certificate must be valid and carry the token's `spiffe_id` when it has one). Each call runs
//! the gRPC `DataKeys` handler in-process with that principal — or with the refusal, so a
//! refused call is audited too — so identity, residency guard, Cedar policy, key state and the
//! audit record (with `surface = "transit"`) are the same code as for gRPC. Errors are
//! `{"errors": ["…"]}`: 4xx for the caller's mistakes (bao does not retry), 5xx only for what
//! a retry can fix (HSM or audit unavailable).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keybroker_proto::v1 as pb;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tonic::Code;
use zeroize::Zeroizing;

use crate::api::audit::Recorder;
use crate::api::{ApiState, DataKeysApi, PreAuthenticated, REQUEST_ID_HEADER};
use crate::audit::{Op, Surface};
use crate::config::{TransitAuth, TransitConfig, TransitToken};
use crate::http::PeerCertificate;
use crate::identity::{IdentityError, Principal, Reason};
use crate::keys::envelope::{Envelope, MAX_ENVELOPE_LEN, MAX_PLAINTEXT_LEN};

/// Largest request body: a base64 SEAL plaintext of 64 KiB plus JSON.
const MAX_BODY: usize = 128 * 1024;
/// Issuer recorded for transit-token principals.
pub(crate) const TOKEN_ISSUER: &str = "keybroker:transit-token";
/// Lease reported by renew-self: keybroker tokens do not expire, so bao renews rarely.
const TOKEN_LEASE_SECS: u64 = 24 * 3600;

/// The endpoint's state.
struct Transit {
    api: DataKeysApi,
    state: Arc<ApiState>,
    config: TransitConfig,
}

/// The router of the transit endpoint.
pub(crate) fn router(state: Arc<ApiState>, config: TransitConfig) -> axum::Router {
    let t = Arc::new(Transit {
        api: DataKeysApi::new(state.clone()),
        state,
        config,
    });
    axum::Router::new()
        .route("/v1/{*path}", any(handle))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no handler for route", None) })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(t)
}

#[derive(Deserialize)]
struct EncryptBody {
    plaintext: String,
}

#[derive(Deserialize)]
struct DecryptBody {
    ciphertext: String,
}

async fn handle(
    State(t): State<Arc<Transit>>,
    method: axum::http::Method,
    Path(path): Path<String>,
    peer: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != axum::http::Method::PUT && method != axum::http::Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use PUT or POST",
            request_id(&headers),
        );
    }
    let leaf = peer.as_ref().map(|Extension(p)| p.0.as_slice());
    let auth = t.authenticate(&headers, leaf);
    let route = if path == "auth/token/renew-self" {
        Route::RenewSelf
    } else {
        match path
            .strip_prefix(t.config.mount.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            Some(rest) => match (rest.strip_prefix("encrypt/"), rest.strip_prefix("decrypt/")) {
                (Some(key), _) => Route::Encrypt(key),
                (_, Some(key)) => Route::Decrypt(key),
                _ => Route::Unknown,
            },
            None => Route::Unknown,
        }
    };
    match route {
        // Refused callers of encrypt/decrypt go through the API too, so the refusal is in the
        // audit log like any other.
        Route::Encrypt(key) | Route::Decrypt(key) => match auth {
            Ok(p) if matches!(route, Route::Encrypt(_)) => t.encrypt(p, key, &headers, &body).await,
            Ok(p) => t.decrypt(p, key, &headers, &body).await,
            Err(why) => t.refuse(&route, why, &headers).await,
        },
        Route::RenewSelf | Route::Unknown if auth.is_err() => {
            // Vault answers a missing or wrong token with 403; bao does not retry a 4xx.
            tracing::info!(
                reason = auth.err().unwrap_or_default(),
                "transit: caller refused"
            );
            error(
                StatusCode::FORBIDDEN,
                "permission denied",
                request_id(&headers),
            )
        }
        Route::RenewSelf => renew_self(&headers),
        Route::Unknown => error(
            StatusCode::NOT_FOUND,
            "no handler for route",
            request_id(&headers),
        ),
    }
}

/// What a transit path asks for.
enum Route<'a> {
    Encrypt(&'a str),
    Decrypt(&'a str),
    RenewSelf,
    Unknown,
}

impl Transit {
    /// A caller that did not authenticate: the API refuses it (so the refusal is in the audit
    /// log like any other) and the answer is 403.
    async fn refuse(&self, route: &Route<'_>, why: &'static str, headers: &HeaderMap) -> Response {
        let result = if matches!(route, Route::Encrypt(_)) {
            let mut rec = self.recorder(Op::Encrypt);
            let req = self.request(pb::EncryptRequest::default(), Err(why), headers);
            let result = self.api.encrypt(req, &mut rec).await.map(|_| ());
            rec.finish(result.map(tonic::Response::new))
                .await
                .map(|_| ())
        } else {
            let mut rec = self.recorder(Op::Decrypt);
            let req = self.request(pb::DecryptRequest::default(), Err(why), headers);
            let result = self.api.decrypt(req, &mut rec).await.map(|_| ());
            rec.finish(result.map(tonic::Response::new))
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                request_id(headers),
            ),
            Err(status) => from_status(&status),
        }
    }

    /// The caller's principal, by the endpoint's `auth` mode, or why there is none.
    fn authenticate(
        &self,
        headers: &HeaderMap,
        leaf: Option<&[u8]>,
    ) -> Result<Principal, &'static str> {
        let identity = &self.state.identity;
        let certificate = |p: Result<Principal, IdentityError>| {
            p.map_err(|e| {
                tracing::info!(error = %e, "transit: client certificate refused");
                match e {
                    IdentityError::MissingCertificate => "missing client certificate",
                    IdentityError::Invalid(Reason::SpiffeIdMismatch) => {
                        "client certificate is not the one bound to this token"
                    }
                    _ => "invalid client certificate",
                }
            })
        };
        match self.config.auth {
            TransitAuth::Token => self.token_principal(headers),
            TransitAuth::Mtls => certificate(identity.certificate_principal(leaf)),
            TransitAuth::Both => {
                let principal = self.token_principal(headers)?;
                certificate(identity.bind_certificate(principal, leaf))
            }
        }
    }

    /// The principal whose token is in `X-Vault-Token`. Tokens are compared by sha256, over
    /// every configured token (no early exit).
    fn token_principal(&self, headers: &HeaderMap) -> Result<Principal, &'static str> {
        const REFUSED: &str = "missing or unknown X-Vault-Token";
        let token = headers.get("x-vault-token").ok_or(REFUSED)?.as_bytes();
        if token.is_empty() || token.len() > 4096 {
            return Err(REFUSED);
        }
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found: Option<&TransitToken> = None;
        for t in &self.config.tokens {
            let diff = t
                .sha256
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(t);
            }
        }
        let t = found.ok_or(REFUSED)?;
        Ok(Principal {
            issuer: TOKEN_ISSUER.to_owned(),
            subject: format!("transit:{}", t.name),
            namespace: t.namespace.clone(),
            cluster: t.cluster.clone(),
            region: t.region.clone(),
            jurisdiction: t.jurisdiction.clone(),
            spiffe_id: t.spiffe_id.clone(),
            ..Principal::default()
        })
    }

    async fn encrypt(
        &self,
        principal: Principal,
        key: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        let rid = request_id(headers);
        let parsed: EncryptBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be JSON with a \"plaintext\" string",
                    rid,
                );
            }
        };
        let encoded = Zeroizing::new(parsed.plaintext);
        let plaintext = match STANDARD.decode(encoded.as_bytes()) {
            Ok(p) if p.len() <= MAX_PLAINTEXT_LEN => Zeroizing::new(p),
            Ok(_) => return error(StatusCode::BAD_REQUEST, "plaintext larger than 64 KiB", rid),
            Err(_) => return error(StatusCode::BAD_REQUEST, "plaintext is not base64", rid),
        };
        let req = self.request(
            pb::EncryptRequest {
                key: key.to_owned(),
                context: std::collections::HashMap::new(),
                plaintext: plaintext.to_vec(),
            },
            Ok(principal),
            headers,
        );
        let mut rec = self.recorder(Op::Encrypt);
        let result = self.api.encrypt(req, &mut rec).await;
        match rec.finish(result).await {
            Ok(resp) => {
                let rid = response_rid(resp.metadata());
                let r = resp.into_inner();
                let body = serde_json::json!({
                    "data": {
                        "ciphertext": format!("vault:v{}:{}", r.key_version, STANDARD.encode(&r.ciphertext)),
                        "key_version": r.key_version,
                    },
                    "lease_id": "", "renewable": false, "lease_duration": 0,
                    "wrap_info": null, "warnings": null, "auth": null,
                });
                ok(&body, rid)
            }
            Err(status) => from_status(&status),
        }
    }

    async fn decrypt(
        &self,
        principal: Principal,
        key: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        let rid = request_id(headers);
        let parsed: DecryptBody = match serde_json::from_slice(body) {
            Ok(b) => b,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "body must be JSON with a \"ciphertext\" string",
                    rid,
                );
            }
        };
        let envelope = match parse_ciphertext(&parsed.ciphertext, key) {
            Ok(e) => e,
            Err(msg) => return error(StatusCode::BAD_REQUEST, msg, rid),
        };
        let req = self.request(
            pb::DecryptRequest {
                ciphertext: envelope,
                context: std::collections::HashMap::new(),
                ttl: None,
            },
            Ok(principal),
            headers,
        );
        let mut rec = self.recorder(Op::Decrypt);
        let result = self.api.decrypt(req, &mut rec).await;
        match rec.finish(result).await {
            Ok(resp) => {
                let rid = response_rid(resp.metadata());
                let r = resp.into_inner();
                let plaintext = Zeroizing::new(r.plaintext);
                let encoded = Zeroizing::new(STANDARD.encode(plaintext.as_slice()));
                let body = serde_json::json!({
                    "data": { "plaintext": encoded.as_str() },
                    "lease_id": "", "renewable": false, "lease_duration": 0,
                    "wrap_info": null, "warnings": null, "auth": null,
                });
                ok(&body, rid)
            }
            Err(status) => from_status(&status),
        }
    }

    fn recorder(&self, op: Op) -> Recorder {
        let mut rec = self.state.recorder(op);
        rec.surface(Surface::Transit);
        rec
    }

    /// A gRPC request carrying the authenticated principal and the caller's request id.
    fn request<T>(
        &self,
        body: T,
        auth: Result<Principal, &'static str>,
        headers: &HeaderMap,
    ) -> tonic::Request<T> {
        let mut req = tonic::Request::new(body);
        req.extensions_mut().insert(PreAuthenticated(auth));
        if let Some(v) = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| tonic::metadata::MetadataValue::try_from(v).ok())
        {
            // ApiState::begin validates it (or makes a fresh one).
            req.metadata_mut().insert(REQUEST_ID_HEADER, v);
        }
        req
    }
}

/// `vault:v<N>:<base64 envelope>` for key `key` → the envelope bytes. The version in the text
/// and the key and version inside the envelope must agree with the URL.
fn parse_ciphertext(text: &str, key: &str) -> Result<Vec<u8>, &'static str> {
    let mut parts = text.split(':');
    let (Some(prefix), Some(version), Some(b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("ciphertext must be vault:v<N>:<base64>");
    };
    if prefix != "vault" {
        return Err("ciphertext must start with vault:");
    }
    let version: u32 = version
        .strip_prefix('v')
        .filter(|d| !d.is_empty() && d.len() <= 10 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .filter(|v| *v >= 1)
        .ok_or("ciphertext version must be v<N>")?;
    if b64.len() > MAX_ENVELOPE_LEN.div_ceil(3) * 4 {
        return Err("ciphertext too large");
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| "ciphertext is not base64")?;
    let env = Envelope::parse(&bytes).map_err(|_| "ciphertext is malformed")?;
    if env.key.as_str() != key {
        return Err("ciphertext was not made with this key");
    }
    if env.version != version {
        return Err("ciphertext version does not match its envelope");
    }
    Ok(bytes)
}

fn renew_self(headers: &HeaderMap) -> Response {
    // The caller already holds the token; echoing it is what Vault does, and bao's renewer
    // reads it back from here.
    let token = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let body = serde_json::json!({
        "auth": {
            "client_token": token,
            "accessor": "",
            "policies": ["default"],
            "token_policies": ["default"],
            "lease_duration": TOKEN_LEASE_SECS,
            "renewable": true,
        },
        "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": null, "wrap_info": null, "warnings": null,
    });
    ok(&body, request_id(headers))
}

/// The caller's request id header, if it is well formed (echoed on early errors).
fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
}

fn response_rid(m: &tonic::metadata::MetadataMap) -> Option<String> {
    m.get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn ok(body: &serde_json::Value, rid: Option<String>) -> Response {
    with_rid((StatusCode::OK, axum::Json(body)).into_response(), rid)
}

fn error(code: StatusCode, msg: &str, rid: Option<String>) -> Response {
    let body = serde_json::json!({ "errors": [msg] });
    with_rid((code, axum::Json(body)).into_response(), rid)
}

fn with_rid(mut r: Response, rid: Option<String>) -> Response {
    if let Some(v) = rid.and_then(|v| HeaderValue::from_str(&v).ok()) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    r
}

/// gRPC status → HTTP: 4xx for what the caller must change, 5xx only for what a retry can fix.
fn http_code(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated | Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn from_status(status: &tonic::Status) -> Response {
    // Status messages are safe by construction (api/status.rs): no secrets, no key names of
    // keys the caller may not see.
    error(
        http_code(status.code()),
        status.message(),
        response_rid(status.metadata()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::name::KeyName;

    fn envelope(key: &str, version: u32) -> Vec<u8> {
        Envelope {
            key: KeyName::parse(key).unwrap(),
            version,
            iv: [7; 12],
            sealed: vec![1; 32],
        }
        .encode()
    }

    #[test]
    fn ciphertext_parsing_accepts_exactly_our_shape() {
        let env = envelope("seal/bao", 3);
        let text = format!("vault:v3:{}", STANDARD.encode(&env));
        assert_eq!(parse_ciphertext(&text, "seal/bao").unwrap(), env);
        let b64 = STANDARD.encode(&env);
        for (bad, why) in [
            (format!("vault:{b64}"), "two parts"),
            (format!("vault:v3:{b64}:x"), "four parts"),
            (format!("other:v3:{b64}"), "prefix"),
            (format!("vault:3:{b64}"), "no v"),
            (format!("vault:v:{b64}"), "empty version"),
            (format!("vault:v0:{b64}"), "version 0"),
            (format!("vault:v4:{b64}"), "version differs from envelope"),
            (format!("vault:v99999999999:{b64}"), "version overflow"),
            ("vault:v3:not base64!".to_owned(), "bad base64"),
            (
                format!("vault:v3:{}", STANDARD.encode(b"KBgarbage")),
                "not an envelope",
            ),
            (
                format!("vault:v3:{}", STANDARD.encode(envelope("seal/other", 3))),
                "other key",
            ),
            (format!("vault:v3:{}", "A".repeat(1 << 20)), "oversized"),
        ] {
            assert!(parse_ciphertext(&bad, "seal/bao").is_err(), "{why}");
        }
    }

    #[test]
    fn retryable_codes_and_only_those_are_5xx() {
        for c in [Code::Unavailable, Code::DeadlineExceeded, Code::Aborted] {
            assert_eq!(http_code(c), StatusCode::SERVICE_UNAVAILABLE);
        }
        for c in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::ResourceExhausted,
        ] {
            assert!(http_code(c).is_client_error(), "{c:?}");
        }
    }
}
