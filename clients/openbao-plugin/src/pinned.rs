//! Client authentication for the plugin's gRPC port: exactly one certificate is accepted, the
//! one bao passed in `PLUGIN_CLIENT_CERT`, byte for byte, and the client must prove it holds
//! its key (the TLS handshake signature is verified against it).
//!
//! bao's certificate is a self-signed ECDSA P-521 CA certificate. Path validation (webpki)
//! refuses a CA certificate as a leaf and ring cannot verify P-521, so the pin is a custom
//! verifier and P-521 signatures go through the pure-Rust `p521` crate. We stay on the ring
//! provider the rest of the workspace uses: enabling rustls' `aws_lc_rs` feature next to
//! `ring` would make every `ServerConfig::builder()` without an installed default provider
//! (tonic's server TLS in the broker) panic, because cargo unifies features workspace-wide.

use p521::ecdsa::signature::Verifier as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm,
    UnixTime, alg_id,
};

/// ECDSA over P-521 with SHA-512, for webpki's signature checks.
#[derive(Debug)]
struct EcdsaP521Sha512;

impl SignatureVerificationAlgorithm for EcdsaP521Sha512 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let key =
            p521::ecdsa::VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let sig = p521::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        key.verify(message, &sig).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P521
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA512
    }
}

/// Handshake signature schemes accepted from the client: the ECDSA curves and Ed25519 (bao
/// uses P-521; the others keep the pin usable with any modern client certificate).
static CLIENT_SIG_ALGS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        &EcdsaP521Sha512,
        webpki::ring::ECDSA_P384_SHA384,
        webpki::ring::ECDSA_P256_SHA256,
        webpki::ring::ED25519,
    ],
    mapping: &[
        (SignatureScheme::ECDSA_NISTP521_SHA512, &[&EcdsaP521Sha512]),
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[webpki::ring::ECDSA_P384_SHA384],
        ),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[webpki::ring::ECDSA_P256_SHA256],
        ),
        (SignatureScheme::ED25519, &[webpki::ring::ED25519]),
    ],
};

/// Accepts exactly one client certificate (compared as DER bytes) and nothing else.
#[derive(Debug)]
pub struct PinnedClientCert {
    pinned: CertificateDer<'static>,
}

impl PinnedClientCert {
    /// Pins `cert`.
    #[must_use]
    pub fn new(cert: CertificateDer<'static>) -> Self {
        Self { pinned: cert }
    }

    fn check_pinned(&self, cert: &CertificateDer<'_>) -> Result<(), Error> {
        if cert.as_ref() == self.pinned.as_ref() {
            Ok(())
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ClientCertVerifier for PinnedClientCert {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        // bao sends its self-signed certificate alone; a chain means some other client.
        if !intermediates.is_empty() {
            tracing::warn!(
                "refused a client certificate chain: only bao's certificate is accepted"
            );
            return Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        self.check_pinned(end_entity).inspect_err(|_| {
            tracing::warn!("refused a client certificate that is not bao's (PLUGIN_CLIENT_CERT)");
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.check_pinned(cert)?;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &CLIENT_SIG_ALGS)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.check_pinned(cert)?;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &CLIENT_SIG_ALGS)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        CLIENT_SIG_ALGS.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use p521::ecdsa::signature::Signer as _;

    use super::*;

    fn p521_key() -> Result<p521::ecdsa::SigningKey, p521::ecdsa::Error> {
        let mut secret = [0x11u8; 66];
        secret[0] = 0x00; // below the group order
        p521::ecdsa::SigningKey::from_slice(&secret)
    }

    #[test]
    fn p521_signatures_verify_and_tampering_fails() -> Result<(), Box<dyn std::error::Error>> {
        let key = p521_key()?;
        let public = p521::ecdsa::VerifyingKey::from(&key).to_encoded_point(false);
        let sig: p521::ecdsa::Signature = key.sign(b"handshake transcript");
        let der = sig.to_der();
        let alg = EcdsaP521Sha512;
        assert!(
            alg.verify_signature(public.as_bytes(), b"handshake transcript", der.as_bytes())
                .is_ok()
        );
        assert!(
            alg.verify_signature(public.as_bytes(), b"another transcript", der.as_bytes())
                .is_err()
        );
        assert!(
            alg.verify_signature(public.as_bytes(), b"handshake transcript", &[0x30, 0x00])
                .is_err()
        );
        assert!(
            alg.verify_signature(&[4, 1, 2], b"x", der.as_bytes())
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn only_the_pinned_certificate_alone_is_accepted() {
        let pinned = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let other = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x02]);
        let v = PinnedClientCert::new(pinned.clone());
        let now = UnixTime::now();
        assert!(v.verify_client_cert(&pinned, &[], now).is_ok());
        assert!(v.verify_client_cert(&other, &[], now).is_err());
        assert!(v.verify_client_cert(&pinned, &[other], now).is_err());
        assert!(v.client_auth_mandatory());
        assert!(
            v.supported_verify_schemes()
                .contains(&SignatureScheme::ECDSA_NISTP521_SHA512)
        );
    }
}
