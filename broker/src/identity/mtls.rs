//! Client certificates: a rustls [`ClientCertVerifier`] whose trusted roots can be swapped at
//! runtime, so a SPIRE bundle can rotate without a restart.
//!
//! The chain (signatures, validity, clientAuth EKU) is checked by rustls-webpki against the
//! current bundle; the X.509-SVID leaf rules by [`super::svid`]. A refused certificate fails the
//! TLS handshake: no request ever reaches the API. [`ClientCa::reload`] re-reads the bundle
//! (called by the file poller and on SIGHUP); a bad new bundle keeps the old one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use super::IdentityError;

/// Largest CA bundle read (a SPIRE bundle is a few KiB).
const MAX_BUNDLE: u64 = 1024 * 1024;

struct Loaded {
    verifier: Arc<dyn ClientCertVerifier>,
    sha256: [u8; 32],
}

/// The client CA bundle in force, and the trust domains accepted.
pub struct ClientCa {
    path: PathBuf,
    trust_domains: Vec<String>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("path", &self.path)
            .field("trust_domains", &self.trust_domains)
            .finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The file is byte-for-byte what is in force.
    Unchanged,
    /// A new bundle with this many CA certificates is in force.
    Replaced(usize),
}

impl ClientCa {
    /// Loads the bundle at `path`.
    ///
    /// # Errors
    /// [`IdentityError::ClientCa`]: unreadable, no certificate, or a certificate webpki cannot
    /// use as a trust anchor.
    pub fn load(path: &Path, trust_domains: Vec<String>) -> Result<Arc<Self>, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (loaded, _) = build(path, &provider)?;
        Ok(Arc::new(Self {
            path: path.to_path_buf(),
            trust_domains,
            provider,
            current: RwLock::new(loaded),
        }))
    }

    /// Re-reads the bundle; a bundle that does not load leaves the one in force untouched.
    ///
    /// # Errors
    /// Why the new bundle was refused (the old one stays).
    pub fn reload(&self) -> Result<Reloaded, IdentityError> {
        let result = self.try_reload();
        match &result {
            Ok(Reloaded::Replaced(n)) => {
                tracing::info!(file = %self.path.display(), ca_certs = n, "client CA bundle reloaded");
            }
            Ok(Reloaded::Unchanged) => {}
            Err(e) => {
                tracing::warn!(error = %e, "client CA bundle not reloaded; keeping the old one")
            }
        }
        result
    }

    fn try_reload(&self) -> Result<Reloaded, IdentityError> {
        let bytes = read_bundle(&self.path)?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if self.current.read().is_ok_and(|c| c.sha256 == digest) {
            return Ok(Reloaded::Unchanged);
        }
        let (loaded, count) = build(&self.path, &self.provider)?;
        let mut slot = self.current.write().map_err(|_| IdentityError::ClientCa {
            path: self.path.display().to_string(),
            problem: "lock poisoned".into(),
        })?;
        *slot = loaded;
        Ok(Reloaded::Replaced(count))
    }

    /// The rustls verifier that always consults the bundle in force.
    #[must_use]
    pub fn verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(SpiffeVerifier {
            ca: self.clone(),
            mandatory: true,
        })
    }

    /// The same verifier, but a client may also connect without a certificate (the HTTP side
    /// port: load balancers probe `/readyz` without one). A certificate that is presented is
    /// checked exactly as by [`Self::verifier`]; the routes that need one refuse calls
    /// without.
    #[must_use]
    pub fn optional_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(SpiffeVerifier {
            ca: self.clone(),
            mandatory: false,
        })
    }

    /// Accepted trust domains.
    #[must_use]
    pub fn trust_domains(&self) -> &[String] {
        &self.trust_domains
    }

    /// Polls the file every `every` and reloads when its content changed, until `cancel`.
    pub async fn watch(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let ca = self.clone();
            // File I/O off the async workers.
            let _ = tokio::task::spawn_blocking(move || ca.reload()).await;
        }
    }

    fn inner(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.current
            .read()
            .map(|c| c.verifier.clone())
            .map_err(|_| rustls::Error::General("client CA lock poisoned".into()))
    }
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let err = |problem: String| IdentityError::ClientCa {
        path: path.display().to_string(),
        problem,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .len();
    if len > MAX_BUNDLE {
        return Err(err(format!("larger than {MAX_BUNDLE} bytes")));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

fn build(path: &Path, provider: &Arc<CryptoProvider>) -> Result<(Loaded, usize), IdentityError> {
    let err = |problem: String| IdentityError::ClientCa {
        path: path.display().to_string(),
        problem,
    };
    let bytes = read_bundle(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM bundle: {e}")))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE block".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        roots
            .add(c.clone())
            .map_err(|e| err(format!("certificate {i}: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| err(e.to_string()))?;
    Ok((
        Loaded {
            verifier,
            sha256: Sha256::digest(&bytes).into(),
        },
        certs.len(),
    ))
}

#[derive(Debug)]
struct SpiffeVerifier {
    ca: Arc<ClientCa>,
    mandatory: bool,
}

impl ClientCertVerifier for SpiffeVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    // The subjects would have to be borrowed through the lock; clients present their one SVID
    // anyway, so no hints are sent.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if let Err(e) = self
            .ca
            .inner()?
            .verify_client_cert(end_entity, intermediates, now)
        {
            tracing::info!(error = %e, fingerprint = %super::svid::fingerprint(end_entity),
                "client certificate refused: chain");
            return Err(e);
        }
        match super::svid::check(end_entity, &self.ca.trust_domains) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(e) => {
                tracing::info!(error = %e, fingerprint = %super::svid::fingerprint(end_entity),
                    "client certificate refused: X.509-SVID rules");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.ca.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.ca.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
