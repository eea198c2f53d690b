//! X.509-SVID leaf rules (SPIFFE X509-SVID §4–5), on top of the chain check rustls-webpki
//! already did: exactly one URI SAN `spiffe://<trust-domain>/<path>`, read byte for byte; not a
//! CA; key usage with digitalSignature and without keyCertSign/cRLSign; the trust domain on the
//! allow-list. Pure: DER in, [`Svid`] or a [`SvidError`] out.

use sha2::{Digest as _, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer as _;

pub(crate) use super::spiffe::parse_spiffe_id;

/// A leaf certificate that passed the SVID rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    /// `spiffe://trust-domain/path`, exactly as in the certificate.
    pub spiffe_id: String,
    /// The trust domain part of it.
    pub trust_domain: String,
    /// SHA-256 of the leaf DER, lower-case hex.
    pub fingerprint: String,
}

/// Why a client certificate is not an acceptable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The DER does not parse (or has trailing bytes, or a duplicated extension).
    #[error("certificate does not parse")]
    Malformed,
    /// basicConstraints says cA.
    #[error("leaf is a CA certificate")]
    CaAsLeaf,
    /// No keyUsage, or without digitalSignature, or with keyCertSign/cRLSign.
    #[error("key usage must have digitalSignature and not keyCertSign/cRLSign")]
    KeyUsage,
    /// Not exactly one URI SAN.
    #[error("{0} URI SANs; exactly one is required")]
    UriCount(usize),
    /// The URI SAN is not a well-formed SPIFFE ID.
    #[error("URI SAN is not a SPIFFE ID")]
    NotSpiffeId,
    /// The trust domain is not on the allow-list.
    #[error("trust domain {0:?} is not allowed")]
    ForeignTrustDomain(String),
}

/// Applies the SVID rules to leaf `der`, accepting only `trust_domains`.
///
/// # Errors
/// The first rule the certificate breaks.
pub fn check(der: &[u8], trust_domains: &[String]) -> Result<Svid, SvidError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|_| SvidError::Malformed)?;
    if !rest.is_empty() {
        return Err(SvidError::Malformed);
    }
    let bc = cert.basic_constraints().map_err(|_| SvidError::Malformed)?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err(SvidError::CaAsLeaf);
    }
    let ku = cert
        .key_usage()
        .map_err(|_| SvidError::Malformed)?
        .ok_or(SvidError::KeyUsage)?;
    if !ku.value.digital_signature() || ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::KeyUsage);
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|_| SvidError::Malformed)?;
    let uris: Vec<&str> = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let [uri] = uris.as_slice() else {
        return Err(SvidError::UriCount(uris.len()));
    };
    let trust_domain = parse_spiffe_id(uri).ok_or(SvidError::NotSpiffeId)?;
    if !trust_domains.iter().any(|t| t == trust_domain) {
        return Err(SvidError::ForeignTrustDomain(trust_domain.to_owned()));
    }
    Ok(Svid {
        spiffe_id: (*uri).to_owned(),
        trust_domain: trust_domain.to_owned(),
        fingerprint: fingerprint(der),
    })
}

/// SHA-256 of `der`, lower-case hex.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_are_read_strictly() {
        assert_eq!(
            parse_spiffe_id("spiffe://eu1.example/ns/ml/sa/train"),
            Some("eu1.example")
        );
        for bad in [
            "SPIFFE://eu1.example/a",
            "spiffe://eu1.example",
            "spiffe://eu1.example/",
            "spiffe://eu1.example/a//b",
            "spiffe://eu1.example/a/../b",
            "spiffe://EU1.example/a",
            "spiffe://eu1.example:443/a",
            "spiffe://user@eu1.example/a",
            "spiffe://eu1.example/a?x=1",
            "spiffe://eu1.example/a#f",
            "spiffe:///a",
            "https://eu1.example/a",
        ] {
            assert_eq!(parse_spiffe_id(bad), None, "{bad}");
        }
    }
}
