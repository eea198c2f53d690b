//! The XKS proxy API as AWS KMS calls it: every request SigV4-signed (AWS's signer,
//! `aws-sigv4`) and sent over HTTPS with keep-alive (one connection per request in flight),
//! from the variables of a dev `xks.env` (`--xks-env`). `datakey` is an XKS Encrypt of a
//! 32-byte key with a ciphertext integrity value (what KMS GenerateDataKey asks for), `encrypt`
//! the same without the CDIV, `decrypt` opens one ciphertext made at setup.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use zeroize::Zeroizing;

use super::measure::{OpKind, PAYLOAD};

/// One XKS key behind a keybroker XKS endpoint.
pub(crate) struct XksTarget {
    client: reqwest::Client,
    /// `https://host:port/prefix/kms/xks/v1/keys/KEY/`.
    base: String,
    host: String,
    path: String,
    region: String,
    access_key_id: String,
    secret: Zeroizing<String>,
    decrypt: serde_json::Value,
}

fn metadata(op: &str) -> serde_json::Value {
    serde_json::json!({
        "awsPrincipalArn": "arn:aws:iam::123456789012:role/keybroker-bench",
        "kmsOperation": op,
        "kmsRequestId": uuid::Uuid::new_v4().to_string(),
        "kmsKeyArn": "arn:aws:kms:eu-central-1:123456789012:key/keybroker-bench",
    })
}

impl XksTarget {
    /// Reads `env_file`, builds the HTTPS client and makes the ciphertext decrypts open.
    ///
    /// # Errors
    /// A message for an unreadable or incomplete env file, or a failing setup request.
    pub(crate) async fn connect(env_file: &Path, key: &str, pool: usize) -> Result<Self, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(env_file)
                .map_err(|e| format!("cannot read {}: {e}", env_file.display()))?,
        );
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("export ")?.split_once('='))
            .collect();
        let var = |k: &str| {
            vars.get(k)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| format!("{} has no {k}", env_file.display()))
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!("{key:?} is not an XKS keyId"));
        }
        let host = var("XKS_PROXY_HOST")?;
        let path = format!("/{}/kms/xks/v1/keys/{key}/", var("URI_PREFIX")?);
        let mut roots = rustls::RootCertStore::empty();
        if let Ok(ca) = var("CURL_CA_BUNDLE") {
            let certs = CertificateDer::pem_file_iter(&ca)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("CA file {ca}: {e}"))?;
            roots.add_parsable_certificates(certs);
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        // A store with mTLS: present the client certificate, as AWS KMS does.
        let tls = match (var("XKS_CLIENT_CERT"), var("XKS_CLIENT_KEY")) {
            (Ok(cert), Ok(key)) => {
                let chain = CertificateDer::pem_file_iter(&cert)
                    .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("client certificate {cert}: {e}"))?;
                let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&key)
                    .map_err(|e| format!("client key {key}: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())?
            }
            _ => builder.with_no_client_auth(),
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .pool_max_idle_per_host(pool)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let mut t = Self {
            client,
            base: format!("https://{host}{path}"),
            host,
            path,
            region: var("REGION")?,
            access_key_id: var("SIGV4_ACCESS_KEY_ID")?,
            secret: Zeroizing::new(var("SIGV4_SECRET_ACCESS_KEY")?),
            decrypt: serde_json::Value::Null,
        };
        let enc = t
            .post("encrypt", &t.encrypt_body(false))
            .await
            .map_err(|e| format!("XKS encrypt at setup: {e}"))?;
        let mut decrypt = serde_json::json!({ "encryptionAlgorithm": "AES_GCM" });
        for k in [
            "ciphertext",
            "initializationVector",
            "authenticationTag",
            "ciphertextMetadata",
        ] {
            decrypt[k] = enc
                .get(k)
                .cloned()
                .ok_or_else(|| format!("XKS encrypt at setup: no {k}"))?;
        }
        t.decrypt = decrypt;
        Ok(t)
    }

    fn encrypt_body(&self, cdiv: bool) -> serde_json::Value {
        let mut body = serde_json::json!({
            "plaintext": STANDARD.encode(PAYLOAD),
            "encryptionAlgorithm": "AES_GCM",
        });
        if cdiv {
            body["ciphertextDataIntegrityValueAlgorithm"] = "SHA_256".into();
        }
        body
    }

    /// Signs and sends one call; the answer's JSON, or a short error code.
    async fn post(&self, op: &str, body: &serde_json::Value) -> Result<serde_json::Value, String> {
        let mut body = body.clone();
        body["requestMetadata"] = metadata(if op == "decrypt" {
            "Decrypt"
        } else {
            "Encrypt"
        });
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let path = format!("{}{op}", self.path);
        let identity = aws_credential_types::Credentials::new(
            self.access_key_id.as_str(),
            self.secret.as_str(),
            None,
            None,
            "keybroker-bench",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("kms-xks-proxy")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let headers = [
            ("host", self.host.as_str()),
            ("content-type", "application/json"),
        ];
        let request = SignableRequest::new(
            "POST",
            path.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(&bytes),
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        let mut req = self
            .client
            .post(format!("{}{op}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        let resp = req.body(bytes).send().await.map_err(|e| {
            if e.is_timeout() {
                "TIMEOUT".to_owned()
            } else {
                "TRANSPORT".to_owned()
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|_| "TRANSPORT".to_owned())?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| "MALFORMED_RESPONSE".to_owned())?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(v["errorName"]
                .as_str()
                .map_or_else(|| format!("HTTP_{}", status.as_u16()), str::to_owned))
        }
    }

    /// One operation.
    pub(crate) async fn call(&self, op: OpKind, _worker: usize) -> Result<(), String> {
        match op {
            OpKind::Datakey => self.post("encrypt", &self.encrypt_body(true)).await,
            OpKind::Encrypt => self.post("encrypt", &self.encrypt_body(false)).await,
            OpKind::Decrypt => self.post("decrypt", &self.decrypt).await,
            OpKind::Sign | OpKind::Attested | OpKind::Nonce => {
                return Err("UNSUPPORTED_OP".into());
            }
        }
        .map(drop)
    }
}
