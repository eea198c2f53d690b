//! The plugin's TLS server side: an ephemeral self-signed certificate made at start (bao learns
//! it from the handshake line and trusts nothing else) and a rustls config that speaks h2 only
//! and accepts only bao's pinned client certificate.

use std::sync::Arc;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::pinned::PinnedClientCert;

/// Why the TLS side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Making the ephemeral server certificate failed.
    #[error("cannot generate the plugin's server certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// `PLUGIN_CLIENT_CERT` holds no PEM certificate.
    #[error("PLUGIN_CLIENT_CERT is not a PEM certificate")]
    ClientCertPem,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ephemeral server identity: certificate DER (printed in the handshake line) and key.
pub struct ServerIdentity {
    /// The self-signed certificate, DER.
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// A fresh P-256 key and a self-signed certificate for `localhost` (the name go-plugin
    /// verifies). go-plugin puts it alone in its root pool; Go trusts a certificate found in
    /// the pool as it is, so it stays a plain leaf (CA:FALSE), which other TLS stacks (rustls
    /// in our tests) also accept as their own trust anchor.
    ///
    /// # Errors
    /// `Generate` when rcgen fails.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "openbao-kms-keybroker");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }
}

/// Parses the first certificate of `pem` (bao's `PLUGIN_CLIENT_CERT`).
///
/// # Errors
/// `ClientCertPem` when there is none.
pub fn client_cert_from_pem(pem: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| TlsError::ClientCertPem)
}

/// The server config: TLS 1.2/1.3 with the ring provider, ALPN `h2`, and mandatory client
/// authentication pinned to `client_cert`.
///
/// # Errors
/// `Rustls` when rustls refuses the key or settings.
pub fn server_config(
    identity: &ServerIdentity,
    client_cert: CertificateDer<'static>,
) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(PinnedClientCert::new(client_cert)))
        .with_single_cert(
            vec![identity.cert.clone()],
            PrivateKeyDer::Pkcs8(identity.key.clone_key()),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
