//! OpenBao (or Vault) transit over HTTP, for side-by-side figures: `datakey` is
//! `POST /v1/transit/datakey/plaintext/KEY`, `encrypt` is `POST /v1/transit/encrypt/KEY` with a
//! 32-byte payload, `decrypt` opens one ciphertext made at setup. HTTP/1.1 keep-alive (one
//! connection per request in flight), TLS when `--addr` is `https://` with `--ca` as the only
//! root. The token comes from `--token-file` and is sent as `X-Vault-Token`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use zeroize::Zeroizing;

use super::measure::{OpKind, PAYLOAD};

/// A transit key behind an OpenBao server.
pub(crate) struct Transit {
    client: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
    /// Ciphertext (`vault:v1:…`) opened by every decrypt, as its JSON body.
    decrypt_body: String,
    encrypt_body: String,
}

impl Transit {
    /// Builds the HTTP client and makes the ciphertext for decrypts.
    ///
    /// # Errors
    /// A message for an unreadable token or CA file, or a failing setup request.
    pub(crate) async fn connect(
        addr: &str,
        key: &str,
        token_file: &Path,
        ca: Option<&Path>,
        pool: usize,
    ) -> Result<Self, String> {
        let token = Zeroizing::new(
            std::fs::read_to_string(token_file)
                .map_err(|e| format!("cannot read token file {}: {e}", token_file.display()))?
                .trim()
                .to_owned(),
        );
        if key.is_empty() || key.contains(['/', '?', '#']) {
            return Err(format!("{key:?} is not a transit key name"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
            roots.add_parsable_certificates(certs);
        }
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .pool_max_idle_per_host(pool)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let base = format!("{}/v1/transit", addr.trim_end_matches('/'));
        let encrypt_body = serde_json::json!({ "plaintext": STANDARD.encode(PAYLOAD) }).to_string();
        let mut t = Self {
            client,
            base: format!("{base}/{{op}}/{key}"),
            token,
            decrypt_body: String::new(),
            encrypt_body,
        };
        let resp = t
            .post("encrypt", t.encrypt_body.clone())
            .await
            .map_err(|e| format!("transit encrypt at setup: {e}"))?;
        let v: serde_json::Value =
            serde_json::from_slice(&resp).map_err(|e| format!("transit encrypt at setup: {e}"))?;
        let ct = v["data"]["ciphertext"]
            .as_str()
            .ok_or("transit encrypt at setup: no data.ciphertext")?;
        t.decrypt_body = serde_json::json!({ "ciphertext": ct }).to_string();
        Ok(t)
    }

    async fn post(&self, op: &str, body: String) -> Result<Vec<u8>, String> {
        let url = self.base.replace("{op}", op);
        let resp = self
            .client
            .post(url)
            .header("X-Vault-Token", self.token.as_str())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "TIMEOUT".to_owned()
                } else {
                    "TRANSPORT".to_owned()
                }
            })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|_| "TRANSPORT".to_owned())?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(format!("HTTP_{}", status.as_u16()))
        }
    }

    /// One operation.
    pub(crate) async fn call(&self, op: OpKind, _worker: usize) -> Result<(), String> {
        let (path, body) = match op {
            OpKind::Datakey => ("datakey/plaintext", "{}".to_owned()),
            OpKind::Encrypt => ("encrypt", self.encrypt_body.clone()),
            OpKind::Decrypt => ("decrypt", self.decrypt_body.clone()),
            OpKind::Sign | OpKind::Attested | OpKind::Nonce => {
                return Err("UNSUPPORTED_OP".into());
            }
        };
        self.post(path, body).await.map(drop)
    }
}
