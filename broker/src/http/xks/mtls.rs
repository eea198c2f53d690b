//! Optional mutual TLS of the XKS listener (XKS spec, "Authentication"): a store with `mtls`
//! accepts calls only with a client certificate that chains to its CA and carries one of its
//! names (AWS KMS presents `cks.kms.<region>.amazonaws.com`).
//!
//! The handshake cannot know the URI prefix, so the listener asks every client for a
//! certificate (optional: stores without mTLS share the listener) and verifies a presented one
//! against the CAs of all mTLS stores. A certificate that does not verify terminates the
//! handshake with a `handshake_failure` alert, as the spec's conformance client expects (the
//! reason is logged here, not told to the peer). The store's names are then checked per
//! request ([`check`]).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

use crate::config::{XksConfig, XksMtlsConfig};

use super::XksSetupError;

/// The client-certificate verifier of the XKS listener, when a store asks for mTLS.
///
/// # Errors
/// A CA file that cannot be read or holds no certificate.
pub(crate) fn client_verifier(
    config: &XksConfig,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, XksSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    for m in config.stores.iter().filter_map(|s| s.mtls.as_ref()) {
        let problem = |p: String| XksSetupError::Mtls {
            path: m.ca_file.display().to_string(),
            problem: p,
        };
        let certs = CertificateDer::pem_file_iter(&m.ca_file)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| problem(e.to_string()))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(problem("no CA certificate in the file".into()));
        }
    }
    if roots.is_empty() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| XksSetupError::Mtls {
            path: "http.xks.stores.mtls.ca_file".into(),
            problem: e.to_string(),
        })?;
    Ok(Some(Arc::new(Alerting { inner })))
}

/// Whether the verified client certificate `leaf` (if any) may call a store with `mtls`.
pub(super) fn check(mtls: &XksMtlsConfig, leaf: Option<&[u8]>) -> Result<(), &'static str> {
    let leaf = leaf.ok_or("this key store requires a client certificate")?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
        .map_err(|_| "client certificate does not parse")?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        names.extend(san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        }));
    }
    if names
        .iter()
        .any(|n| mtls.names.iter().any(|want| want.eq_ignore_ascii_case(n)))
    {
        Ok(())
    } else {
        Err("client certificate name is not one this key store accepts")
    }
}

/// A verifier that answers every refused certificate with a `handshake_failure` alert.
#[derive(Debug)]
struct Alerting {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for Alerting {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| {
                tracing::info!(error = %e, "XKS: client certificate refused");
                // rustls sends handshake_failure for a General error (an InvalidCertificate
                // error would send a more specific alert).
                rustls::Error::General("client certificate refused".into())
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn cert(cn: &str, san: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(san.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_store_accepts_its_names_by_cn_or_dns_san_and_nothing_else() {
        let m = XksMtlsConfig {
            ca_file: "ca.pem".into(),
            names: vec!["cks.kms.eu-central-1.amazonaws.com".into()],
        };
        let by_cn = cert("cks.kms.eu-central-1.amazonaws.com", &[]);
        let by_san = cert("other", &["cks.kms.eu-central-1.amazonaws.com"]);
        let wrong = cert(
            "cks.kms.us-east-1.amazonaws.com",
            &["cks.kms.us-east-1.amazonaws.com"],
        );
        assert!(check(&m, Some(&by_cn)).is_ok());
        assert!(check(&m, Some(&by_san)).is_ok());
        assert!(check(&m, Some(&wrong)).is_err());
        assert!(check(&m, None).is_err());
        assert!(check(&m, Some(b"not a certificate")).is_err());
    }
}
