//! The AWS KMS External Key Store (XKS) proxy API v1 on the side port (`docs/xks.md`):
//!
//! - `POST /{uri_prefix}/kms/xks/v1/keys/{keyId}/metadata` → `{keySpec, keyUsage, keyStatus}`
//! - `POST …/keys/{keyId}/encrypt` → AES-256-GCM in the HSM (IV from the HSM)
//! - `POST …/keys/{keyId}/decrypt` → the plaintext
//! - `POST …/health` → every HSM of the pool probed
//!
//! Each `uri_prefix` is one key store with its SigV4 credentials and the XKS-purpose keys it
//! may use; `keyId` is the broker key name. Checks run in the order the brief settles
//! (`docs/design/xks-brief.md` §4): path (404 InvalidUriPath, before authentication), method
//! (405), body size, SigV4 (401), JSON (400), key (404), residency and Cedar (403), key state
//! (400 InvalidState), usage (400 InvalidKeyUsage), sizes (501), crypto. Every answer on a key
//! route — refusals included — goes through the API's audit recorder with `surface = "xks"`
//! and what KMS said (`kmsRequestId`, principal, key ARN…) before it is sent; health is not a
//! key operation and is only logged.

mod health;
mod mtls;
mod ops;
mod sigv4;
mod wire;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, header};
use axum::response::Response;
use axum::routing::any;

use crate::api::ApiState;
use crate::config::{XksConfig, XksStoreConfig};
use crate::identity::Principal;

pub(crate) use mtls::client_verifier;
use sigv4::{Credential, Verifier};
use wire::XksError;

/// Issuer of the principal of an XKS call (the key store).
pub(crate) const XKS_ISSUER: &str = "keybroker:xks";
/// What follows the URI prefix on every XKS path.
const API_ROOT: &str = "kms/xks/v1";

/// Why the XKS endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum XksSetupError {
    /// A secret file cannot be used.
    #[error("http.xks.stores[{store}].credentials[{credential}].secret_file {path}: {problem}")]
    Secret {
        /// Store index.
        store: usize,
        /// Credential index.
        credential: usize,
        /// The file.
        path: String,
        /// What is wrong (never the content).
        problem: String,
    },
    /// An mTLS CA file cannot be used.
    #[error("http.xks.stores[].mtls.ca_file {path}: {problem}")]
    Mtls {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

#[derive(Debug)]
/// One key store: its config, its verifier and the principal its calls act as.
struct Store {
    config: XksStoreConfig,
    verifier: Verifier,
    principal: Principal,
}

/// The endpoint's state.
struct Xks {
    state: Arc<ApiState>,
    stores: Vec<Store>,
}

/// The key stores of `[http.xks]` with their secrets read: loaded at start, so a bad secret
/// file stops the broker before it serves.
#[derive(Debug)]
pub(crate) struct Stores(Vec<Store>);

/// What an XKS path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Metadata(&'a str),
    Encrypt(&'a str),
    Decrypt(&'a str),
    Health,
}

/// The router of the XKS endpoint: every path not served by another side-port route lands
/// here, so a wrong prefix answers the spec's InvalidUriPathException.
pub(crate) fn router(state: Arc<ApiState>, stores: Stores) -> axum::Router {
    let x = Arc::new(Xks {
        state,
        stores: stores.0,
    });
    axum::Router::new()
        .route("/{*path}", any(handle))
        .with_state(x)
}

impl Stores {
    /// Reads every store's secrets.
    ///
    /// # Errors
    /// A secret file that is missing, readable by others, or not a secret access key.
    pub(crate) fn load(config: &XksConfig) -> Result<Self, XksSetupError> {
        load(config).map(Self)
    }
}

fn load(config: &XksConfig) -> Result<Vec<Store>, XksSetupError> {
    let mut stores = Vec::with_capacity(config.stores.len());
    for (i, s) in config.stores.iter().enumerate() {
        let mut credentials = Vec::with_capacity(s.credentials.len());
        for (j, c) in s.credentials.iter().enumerate() {
            let secret = read_secret(&c.secret_file).map_err(|problem| XksSetupError::Secret {
                store: i,
                credential: j,
                path: c.secret_file.display().to_string(),
                problem,
            })?;
            credentials.push(Credential::new(c.access_key_id.clone(), &secret));
        }
        let principal = Principal {
            issuer: XKS_ISSUER.to_owned(),
            subject: format!("xks:{}", s.uri_prefix),
            namespace: s.namespace.clone(),
            region: Some(s.region.clone()),
            ..Principal::default()
        };
        stores.push(Store {
            verifier: Verifier::new(s.region.clone(), credentials, config.reject_replays),
            config: s.clone(),
            principal,
        });
    }
    Ok(stores)
}

/// The secret access key in `path`: mode 0600 or stricter, 43-64 of `A-Za-z0-9+/=` (XKS
/// spec, Appendix A). Problems never quote the content.
fn read_secret(path: &std::path::Path) -> Result<zeroize::Zeroizing<String>, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:o}: group and others must have no access (chmod 600)"
        ));
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| e.to_string())?);
    let secret = text.trim();
    if !(43..=64).contains(&secret.len())
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    {
        return Err(
            "not a secret access key: 43-64 of A-Za-z0-9+/= (e.g. `head -c 32 /dev/urandom | base64`)"
                .to_owned(),
        );
    }
    Ok(zeroize::Zeroizing::new(secret.to_owned()))
}

impl Xks {
    /// The store and operation `path` names; `None` answers InvalidUriPathException.
    fn route<'p>(&self, path: &'p str) -> Option<(&Store, Route<'p>)> {
        // No valid XKS path holds these; refusing them first also keeps SigV4's path
        // normalisation out of play.
        if path.contains('%')
            || path.contains("//")
            || path.split('/').any(|s| s == "." || s == "..")
        {
            return None;
        }
        let path = path.strip_prefix('/')?;
        // The store whose `<prefix>/kms/xks/v1/` starts the path, and what follows it.
        let (store, rest) = self.stores.iter().find_map(|s| {
            let prefix = s.config.uri_prefix.as_str();
            let after_prefix = if prefix.is_empty() {
                Some(path)
            } else {
                path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
            };
            let rest = after_prefix?.strip_prefix(API_ROOT)?.strip_prefix('/')?;
            Some((s, rest))
        })?;
        if rest == "health" {
            return Some((store, Route::Health));
        }
        let (key, op) = rest.strip_prefix("keys/")?.split_once('/')?;
        let valid_id = !key.is_empty()
            && key.len() <= 128
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if !valid_id {
            return None;
        }
        match op {
            "metadata" => Some((store, Route::Metadata(key))),
            "encrypt" => Some((store, Route::Encrypt(key))),
            "decrypt" => Some((store, Route::Decrypt(key))),
            _ => None,
        }
    }
}

async fn handle(
    State(x): State<Arc<Xks>>,
    method: Method,
    // The router is merged, not nested: this is the path exactly as sent, as SigV4 signs it.
    uri: axum::http::Uri,
    peer: Option<axum::Extension<crate::http::PeerCertificate>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let route = if uri.query().is_some() {
        None
    } else {
        x.route(uri.path())
    };
    let Some((store, route)) = route else {
        let _ = read_body(body).await;
        return XksError::INVALID_URI_PATH.response(None);
    };
    // What this edge refuses on a key route (method, body) is still a key operation: it goes
    // through the recorder with the rest, after the caller is authenticated or refused.
    let (bytes, early) = match read_body(body).await {
        Ok(b) if method == Method::POST => (b, None),
        Ok(b) => (b, Some(XksError::METHOD_NOT_ALLOWED)),
        Err(e) => (axum::body::Bytes::new(), Some(e)),
    };
    if let (Route::Health, Some(e)) = (route, early) {
        return e.response(None);
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(axum::http::uri::Authority::as_str));
    let leaf = peer.as_ref().map(|axum::Extension(p)| p.0.as_slice());
    let auth = match &store.config.mtls {
        Some(m) => mtls::check(m, leaf),
        None => Ok(()),
    }
    .and_then(|()| {
        store
            .verifier
            .verify(
                uri.path(),
                &headers,
                host,
                &bytes,
                std::time::SystemTime::now(),
            )
            .map(str::to_owned)
    });
    let call = ops::Call {
        state: &x.state,
        store: &store.config,
        principal: &store.principal,
        auth,
        body: &bytes,
        early,
    };
    match route {
        Route::Health => health::health(&x.state, call).await,
        Route::Metadata(key) => call.key_op(ops::KeyOp::Metadata, key).await,
        Route::Encrypt(key) => call.key_op(ops::KeyOp::Encrypt, key).await,
        Route::Decrypt(key) => call.key_op(ops::KeyOp::Decrypt, key).await,
    }
}

/// The body, at most [`wire::MAX_BODY`] bytes.
async fn read_body(body: Body) -> Result<axum::body::Bytes, XksError> {
    axum::body::to_bytes(body, wire::MAX_BODY)
        .await
        .map_err(|_| XksError::validation("request body too large or unreadable"))
}
