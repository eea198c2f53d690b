//! `ClientConfig` and turning it into a tonic `Channel`: TLS with the configured CA as the only
//! trust root, optional client identity for mTLS, and plain http only when explicitly allowed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::ClientError;
use crate::retry::RetryPolicy;

/// How to reach and authenticate to a broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// `https://host:port` (or `http://…` with `allow_insecure`).
    pub endpoint: String,
    /// PEM file with the CA certificate(s) that sign the broker's certificate; the only trust
    /// roots used. Required for `https://`.
    pub ca: Option<PathBuf>,
    /// PEM client certificate for mTLS (needs `key` too).
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// File holding the bearer token (JWT) sent on every request; re-read when it changes.
    /// `None` sends no `authorization` header (mTLS-only setups).
    pub token_file: Option<PathBuf>,
    /// Allow `http://` endpoints (no TLS). Off by default: tokens and key material would cross
    /// the network in clear. Meant for tests only.
    pub allow_insecure: bool,
    /// Retries of data-key calls on retryable codes (see [`RetryPolicy`]).
    pub retry: RetryPolicy,
}

/// How long to wait for the TCP+TLS connection to be set up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ClientConfig {
    /// A config for `endpoint` with nothing else set.
    #[must_use]
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            ..Self::default()
        }
    }

    /// Builds the tonic endpoint, reading the CA and client identity files.
    ///
    /// # Errors
    /// `Config` for a bad or refused endpoint, a missing CA, or a cert without key (or the
    /// reverse); `ConfigFile` naming a file that cannot be read; `Transport` when tonic rejects
    /// the endpoint or TLS settings.
    pub(crate) async fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let scheme = self
            .endpoint
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase())
            .ok_or_else(|| {
                ClientError::Config(format!(
                    "endpoint {:?} has no scheme: use https://host:port",
                    self.endpoint
                ))
            })?;
        let tls = match scheme.as_str() {
            "https" => true,
            "http" if self.allow_insecure => {
                if self.cert.is_some() || self.key.is_some() {
                    return Err(ClientError::Config(
                        "a client certificate needs an https:// endpoint".into(),
                    ));
                }
                false
            }
            "http" => {
                return Err(ClientError::Config(format!(
                    "refusing plain-text endpoint {}: use https:// (plain http is only allowed \
                     with allow_insecure, for tests)",
                    self.endpoint
                )));
            }
            other => {
                return Err(ClientError::Config(format!(
                    "endpoint scheme {other:?} not supported: use https://host:port"
                )));
            }
        };
        let endpoint = Endpoint::from_shared(self.endpoint.clone())?
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("keybroker-client/", env!("CARGO_PKG_VERSION")))?;
        if tls {
            Ok(endpoint.tls_config(self.tls_config().await?)?)
        } else {
            Ok(endpoint)
        }
    }

    /// TLS settings: the CA file as the only root, plus the client identity when configured.
    async fn tls_config(&self) -> Result<ClientTlsConfig, ClientError> {
        let ca_path = self.ca.as_deref().ok_or_else(|| {
            ClientError::Config(format!(
                "no CA certificate configured for {}: the broker's CA file is required",
                self.endpoint
            ))
        })?;
        let ca = read_file("CA", ca_path).await?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.as_slice()));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let cert = read_file("client certificate", cert).await?;
                let key = read_file("client key", key).await?;
                tls = tls.identity(Identity::from_pem(cert.as_slice(), key.as_slice()));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ClientError::Config(
                    "a client certificate needs a client key".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ClientError::Config(
                    "a client key needs a client certificate".into(),
                ));
            }
        }
        Ok(tls)
    }

    /// Connects to the broker.
    ///
    /// # Errors
    /// As [`ClientConfig::endpoint`], plus `Transport` when the connection fails.
    pub(crate) async fn channel(&self) -> Result<Channel, ClientError> {
        Ok(self.endpoint().await?.connect().await?)
    }
}

/// Reads a whole file (zeroized on drop: it may be a private key), naming it on error.
async fn read_file(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    tokio::fs::read(path)
        .await
        .map(Zeroizing::new)
        .map_err(|source| ClientError::ConfigFile {
            what,
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn endpoint_err(cfg: ClientConfig) -> String {
        cfg.endpoint()
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn plain_http_refused_unless_allowed() {
        let cfg = ClientConfig::new("http://127.0.0.1:1");
        assert!(
            endpoint_err(cfg.clone())
                .await
                .contains("refusing plain-text endpoint")
        );
        let cfg = ClientConfig {
            allow_insecure: true,
            ..cfg
        };
        assert!(cfg.endpoint().await.is_ok());
    }

    #[tokio::test]
    async fn https_needs_a_ca() {
        let err = endpoint_err(ClientConfig::new("https://127.0.0.1:1")).await;
        assert!(err.contains("no CA certificate"), "{err}");
    }

    #[tokio::test]
    async fn unreadable_ca_is_named() {
        let cfg = ClientConfig {
            ca: Some(PathBuf::from("/nonexistent/ca.pem")),
            ..ClientConfig::new("https://127.0.0.1:1")
        };
        let err = endpoint_err(cfg).await;
        assert!(err.contains("CA file /nonexistent/ca.pem"), "{err}");
    }

    #[tokio::test]
    async fn cert_without_key_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca.pem");
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
        )?;
        let cfg = ClientConfig {
            ca: Some(ca),
            cert: Some(dir.path().join("c.pem")),
            ..ClientConfig::new("https://127.0.0.1:1")
        };
        assert!(endpoint_err(cfg).await.contains("needs a client key"));
        Ok(())
    }

    #[tokio::test]
    async fn missing_scheme_and_odd_scheme_are_refused() {
        assert!(
            endpoint_err(ClientConfig::new("127.0.0.1:443"))
                .await
                .contains("no scheme")
        );
        assert!(
            endpoint_err(ClientConfig::new("unix:///x"))
                .await
                .contains("not supported")
        );
    }
}
