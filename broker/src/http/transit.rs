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
//! audit record (with `surface = "transit"`) are the same code as for gRPC. What this edge
//! refuses itself (method, a body over 128 KiB, JSON, base64, the `vault:vN:` envelope) goes
//! through the same recorder, so every answer on an encrypt or decrypt route is in the audit
//! log. Errors are `{"errors": ["…"]}`: 4xx for the caller's mistakes (bao does not retry), 5xx
//! only for what a retry can fix (HSM or audit unavailable).

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::any;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keybroker_proto::v1 as pb;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::api::audit::Recorder;
use crate::api::{ApiState, DataKeysApi, PreAuthenticated, REQUEST_ID_HEADER};
use crate::audit::{Op, Surface};
use crate::config::{TransitAuth, TransitConfig, TransitToken};
use crate::http::PeerCertificate;
use crate::identity::{IdentityError, Principal, Reason};
use crate::keys::envelope::MAX_PLAINTEXT_LEN;
use crate::keys::name::KeyName;

mod wire;

use wire::{Refusal, error, from_status, ok, parse_ciphertext, request_id, response_rid};

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

/// The router of the transit endpoint. The body limit is the handler's own
/// ([`wire::read_body`]): axum's limit answers `text/plain` mid-upload and is not audited.
pub(crate) fn router(state: Arc<ApiState>, config: TransitConfig) -> axum::Router {
    let t = Arc::new(Transit {
        api: DataKeysApi::new(state.clone()),
        state,
        config,
    });
    axum::Router::new()
        .route("/v1/{*path}", any(handle))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no handler for route", None) })
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

/// What an encrypt or decrypt call asks the API for, once its body is read and checked.
enum Input {
    Encrypt(Zeroizing<Vec<u8>>),
    Decrypt(Vec<u8>),
}

async fn handle(
    State(t): State<Arc<Transit>>,
    method: axum::http::Method,
    Path(path): Path<String>,
    peer: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let leaf = peer.as_ref().map(|Extension(p)| p.0.as_slice());
    let route = t.route(&path);
    let put = method == axum::http::Method::PUT || method == axum::http::Method::POST;
    if let Route::Key(op, key) = route {
        // Every answer on a key route is a key operation: refusals at this edge (method, body,
        // JSON, base64, envelope) are recorded like the API's own, with the caller's principal.
        let input = match wire::read_body(&headers, body).await {
            Ok(bytes) if put => parse_input(op, key, &bytes),
            Ok(_) => Err(Refusal::METHOD),
            Err(refusal) => Err(refusal),
        };
        let auth = t.authenticate(&headers, leaf);
        return match (auth, input) {
            (Ok(p), Ok(Input::Encrypt(plaintext))) => t.encrypt(p, key, &headers, plaintext).await,
            (Ok(p), Ok(Input::Decrypt(envelope))) => t.decrypt(p, &headers, envelope).await,
            (Ok(p), Err(refusal)) => t.refuse(op, key, Ok(p), &headers, Some(refusal)).await,
            // Who is refused comes before what they sent.
            (Err(why), _) => t.refuse(op, key, Err(why), &headers, None).await,
        };
    }
    // Not a key operation: the body is not needed, but reading it (bounded) keeps the
    // connection reusable.
    let _ = wire::read_body(&headers, body).await;
    if !put {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use PUT or POST",
            request_id(&headers),
        );
    }
    let auth = t.authenticate(&headers, leaf);
    match route {
        _ if auth.is_err() => {
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
        Route::Key(..) | Route::Unknown => error(
            StatusCode::NOT_FOUND,
            "no handler for route",
            request_id(&headers),
        ),
    }
}

/// The body of an encrypt or decrypt call, checked as far as this edge can.
fn parse_input(op: Op, key: &str, body: &[u8]) -> Result<Input, Refusal> {
    if op == Op::Encrypt {
        let parsed: EncryptBody = serde_json::from_slice(body)
            .map_err(|_| Refusal::bad("body must be JSON with a \"plaintext\" string"))?;
        let encoded = Zeroizing::new(parsed.plaintext);
        match STANDARD.decode(encoded.as_bytes()) {
            Ok(p) if p.len() <= MAX_PLAINTEXT_LEN => Ok(Input::Encrypt(Zeroizing::new(p))),
            Ok(p) => {
                drop(Zeroizing::new(p));
                Err(Refusal::bad("plaintext larger than 64 KiB"))
            }
            Err(_) => Err(Refusal::bad("plaintext is not base64")),
        }
    } else {
        let parsed: DecryptBody = serde_json::from_slice(body)
            .map_err(|_| Refusal::bad("body must be JSON with a \"ciphertext\" string"))?;
        parse_ciphertext(&parsed.ciphertext, key)
            .map(Input::Decrypt)
            .map_err(Refusal::bad)
    }
}

/// What a transit path asks for.
#[derive(Clone, Copy)]
enum Route<'a> {
    /// Encrypt or decrypt with the named key.
    Key(Op, &'a str),
    RenewSelf,
    Unknown,
}

impl Transit {
    /// What `path` (after `/v1/`) asks for.
    fn route<'a>(&self, path: &'a str) -> Route<'a> {
        if path == "auth/token/renew-self" {
            return Route::RenewSelf;
        }
        let Some(rest) = path
            .strip_prefix(self.config.mount.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return Route::Unknown;
        };
        match (rest.strip_prefix("encrypt/"), rest.strip_prefix("decrypt/")) {
            (Some(key), _) => Route::Key(Op::Encrypt, key),
            (_, Some(key)) => Route::Key(Op::Decrypt, key),
            _ => Route::Unknown,
        }
    }

    /// A refused `op` call: the caller did not authenticate (`auth` is why), or it did and
    /// this edge refused what it sent (`refusal`). Either way the refusal goes through the
    /// API's recorder, so it is in the audit log like any other, then the answer is sent
    /// (403 for identity; the refusal's own code otherwise; 503 if the record failed).
    async fn refuse(
        &self,
        op: Op,
        key: &str,
        auth: Result<Principal, &'static str>,
        headers: &HeaderMap,
        refusal: Option<Refusal>,
    ) -> Response {
        let mut rec = self.recorder(op);
        let req = self.request((), auth, headers);
        let result: Result<tonic::Response<()>, tonic::Status> =
            match rec.begin(&self.state, &req).await {
                Err(status) => Err(status),
                Ok(call) => {
                    // The key the URL names, when it is a key name at all (a `..` path is not).
                    if let Ok(name) = KeyName::parse(key) {
                        rec.key(name.as_str());
                    }
                    let r = refusal.unwrap_or(Refusal::bad("request refused"));
                    tracing::info!(request_id = %call.rid, reason = r.message,
                        "transit: request refused before the API");
                    Err(call.rid.status(r.code, r.message.to_owned()))
                }
            };
        match (rec.finish(result).await, refusal) {
            (Err(s), Some(r)) if s.code() == r.code => {
                error(r.http, s.message(), response_rid(s.metadata()))
            }
            (Err(s), _) => from_status(&s),
            (Ok(_), _) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
                request_id(headers),
            ),
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
        mut plaintext: Zeroizing<Vec<u8>>,
    ) -> Response {
        let req = self.request(
            pb::EncryptRequest {
                key: key.to_owned(),
                context: std::collections::HashMap::new(),
                // Moved, not copied: the API zeroizes it.
                plaintext: std::mem::take(&mut *plaintext),
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
        headers: &HeaderMap,
        envelope: Vec<u8>,
    ) -> Response {
        let req = self.request(
            pb::DecryptRequest {
                ciphertext: envelope,
                context: std::collections::HashMap::new(),
                ttl: None,
                recipient: None,
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
