//! `[http]`: the HTTPS side port and, on it, the Vault/OpenBao transit-compatible seal
//! endpoint (`[http.transit]`). Types only; parsing is in `raw/http.rs`.

use std::net::SocketAddr;

/// `[http]`: the side port: `/healthz`, `/readyz`, `/metrics`, and the transit endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Listen address, e.g. `127.0.0.1:8200`.
    pub listen: SocketAddr,
    /// Serve TLS with the gRPC server's certificate (default true; the transit endpoint
    /// requires it).
    pub tls: bool,
    /// The transit-compatible seal endpoint, when enabled.
    pub transit: Option<TransitConfig>,
    /// The AWS XKS proxy API, when enabled.
    pub xks: Option<XksConfig>,
}

/// `[http.transit]`: `PUT /v1/<mount>/encrypt/<key>`, `/decrypt/<key>` and
/// `/v1/auth/token/renew-self`, as Vault's and OpenBao's `seal "transit"` call them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitConfig {
    /// Mount path without slashes at either end, e.g. `transit` (bao's `mount_path`).
    pub mount: String,
    /// Which credentials a call must carry.
    pub auth: TransitAuth,
    /// Accepted `X-Vault-Token`s, each naming the principal it stands for (empty with
    /// [`TransitAuth::Mtls`]).
    pub tokens: Vec<TransitToken>,
}

/// `[http.transit] auth`: how a transit caller proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransitAuth {
    /// `X-Vault-Token` only (the default; a client certificate, if sent, is not used).
    #[default]
    Token,
    /// A client certificate only (an X.509-SVID from `[identity.mtls]`'s CA and trust
    /// domains); the principal is its SPIFFE ID and trust domain facts. Any token is ignored.
    Mtls,
    /// Both: the token names the principal; the certificate must be valid, and must carry the
    /// token's `spiffe_id` when the token has one.
    Both,
}

impl TransitAuth {
    /// Whether calls must present a client certificate.
    #[must_use]
    pub fn needs_certificate(self) -> bool {
        matches!(self, Self::Mtls | Self::Both)
    }
}

/// One accepted `X-Vault-Token`, stored as its sha256 only (the token itself is never in the
/// config, the logs or the audit log).
#[derive(Clone, PartialEq, Eq)]
pub struct TransitToken {
    /// Principal name; the subject becomes `transit:<name>`.
    pub name: String,
    /// sha256 of the token.
    pub sha256: [u8; 32],
    /// Namespace fact for policy (e.g. `openbao`).
    pub namespace: Option<String>,
    /// Cluster of the caller (config, as for JWT issuers).
    pub cluster: Option<String>,
    /// Region of the caller, for the residency guard.
    pub region: Option<String>,
    /// Jurisdiction of the caller.
    pub jurisdiction: Option<String>,
    /// With `auth = "both"`: the SPIFFE ID the caller's client certificate must carry.
    pub spiffe_id: Option<String>,
}

impl std::fmt::Debug for TransitToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The hash is not secret, but nothing gains from printing it.
        f.debug_struct("TransitToken")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("region", &self.region)
            .field("jurisdiction", &self.jurisdiction)
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

/// `[http.xks]`: the AWS KMS External Key Store proxy API (`docs/xks.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksConfig {
    /// A listen address of its own (always TLS, with the server certificate); absent: the
    /// API is served on the side port, which then needs `tls = true`.
    pub listen: Option<SocketAddr>,
    /// The key stores, one per URI prefix.
    pub stores: Vec<XksStoreConfig>,
    /// Refuse a second request carrying a signature already seen within the ±5 min window.
    pub reject_replays: bool,
}

/// `[[http.xks.stores]]`: one external key store as AWS KMS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksStoreConfig {
    /// URI prefix without slashes at either end (may be empty): the store serves
    /// `/<uri_prefix>/kms/xks/v1/…`.
    pub uri_prefix: String,
    /// The AWS region of the KMS that calls (the SigV4 credential scope), e.g. `eu-central-1`;
    /// also the caller's region for the residency guard.
    pub region: String,
    /// Namespace fact of the store's principal, for policy.
    pub namespace: Option<String>,
    /// Which XKS keys the store may use: exact names, or a prefix ending in `*`.
    pub keys: Vec<String>,
    /// SigV4 credential sets (one or two, so KMS credentials rotate without downtime).
    pub credentials: Vec<XksCredentialConfig>,
    /// Mutual TLS: calls to this store must present a client certificate from this CA with
    /// one of these names (AWS KMS presents `cks.kms.<region>.amazonaws.com`).
    pub mtls: Option<XksMtlsConfig>,
}

/// `[http.xks.stores.mtls]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksMtlsConfig {
    /// PEM bundle of the CA(s) the client certificate must chain to.
    pub ca_file: std::path::PathBuf,
    /// Accepted names: the certificate's subject CN or a DNS subject alternative name.
    pub names: Vec<String>,
}

/// One SigV4 credential set: the access key id, and the file holding the secret access key
/// (read at start, mode 0600 or stricter; the secret is never in the config text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XksCredentialConfig {
    /// Access key id: 20-30 of `A-Z2-7`.
    pub access_key_id: String,
    /// File holding the secret access key.
    pub secret_file: std::path::PathBuf,
}

impl XksStoreConfig {
    /// Whether the store may use the key `name`.
    #[must_use]
    pub fn allows_key(&self, name: &str) -> bool {
        self.keys.iter().any(|k| match k.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == k,
        })
    }
}
