//! The signature formats of SIGN keys, shared by the broker (which produces them) and the
//! client (which verifies them). Pure, no I/O.
//!
//! - ECDSA P-256 signatures are ASN.1 DER (`SEQUENCE { r INTEGER, s INTEGER }`), as cosign
//!   writes and `cosign verify-blob --key` reads them; PKCS#11 returns raw `r || s`.
//! - Public keys are PEM `PUBLIC KEY` (RFC 5280 SubjectPublicKeyInfo; RFC 8410 for Ed25519).
//! - A key id is the lowercase hex SHA-256 of the SubjectPublicKeyInfo DER.
//! - DSSE (github.com/secure-systems-lab/dsse, protocol v1): the signature is over
//!   `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, and the envelope
//!   is `{"payload": b64(body), "payloadType": type, "signatures": [{"keyid", "sig": b64}]}`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use p256::pkcs8::LineEnding;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Signature algorithm of a SIGN key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA on NIST P-256, ASN.1 DER signatures.
    EcdsaP256,
    /// Ed25519, 64-byte signatures.
    Ed25519,
}

impl Algorithm {
    /// `ecdsa-p256` or `ed25519` (the CLI's names).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Ed25519 => "ed25519",
        }
    }
}

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The public key is not a P-256 or Ed25519 key of the expected form.
    #[error("not a P-256 or Ed25519 public key")]
    BadKey,
    /// The signature is not of the algorithm's form.
    #[error("malformed signature")]
    BadSignature,
    /// The signature does not verify.
    #[error("signature does not verify")]
    Mismatch,
    /// A DSSE envelope is malformed.
    #[error("malformed DSSE envelope: {0}")]
    BadEnvelope(&'static str),
}

/// Raw `r || s` (64 bytes, as PKCS#11 CKM_ECDSA returns it) as ASN.1 DER.
///
/// # Errors
/// [`FormatError::BadSignature`] for a wrong length or a zero scalar.
pub fn ecdsa_der_from_raw(raw: &[u8]) -> Result<Vec<u8>, FormatError> {
    let sig = p256::ecdsa::Signature::from_slice(raw).map_err(|_| FormatError::BadSignature)?;
    Ok(sig.to_der().as_bytes().to_vec())
}

/// A public key in the form the HSM gives it (uncompressed SEC1 point, or the 32 Ed25519
/// bytes) as SubjectPublicKeyInfo DER and PEM.
///
/// # Errors
/// [`FormatError::BadKey`].
pub fn spki(alg: Algorithm, raw: &[u8]) -> Result<(Vec<u8>, String), FormatError> {
    let bad = |_| FormatError::BadKey;
    match alg {
        Algorithm::EcdsaP256 => {
            let key = p256::PublicKey::from_sec1_bytes(raw).map_err(|_| FormatError::BadKey)?;
            let der = key.to_public_key_der().map_err(bad)?;
            let pem = key.to_public_key_pem(LineEnding::LF).map_err(bad)?;
            Ok((der.as_bytes().to_vec(), pem))
        }
        Algorithm::Ed25519 => {
            let bytes: [u8; 32] = raw.try_into().map_err(|_| FormatError::BadKey)?;
            let key =
                ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| FormatError::BadKey)?;
            let der = key.to_public_key_der().map_err(bad)?;
            let pem = key.to_public_key_pem(LineEnding::LF).map_err(bad)?;
            Ok((der.as_bytes().to_vec(), pem))
        }
    }
}

/// The key id of a SubjectPublicKeyInfo DER: lowercase hex SHA-256.
#[must_use]
pub fn keyid(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

/// A parsed public key, ready to verify.
#[derive(Debug, Clone)]
pub enum PublicKey {
    /// ECDSA P-256.
    EcdsaP256(p256::ecdsa::VerifyingKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// Parses a PEM `PUBLIC KEY` of either algorithm.
    ///
    /// # Errors
    /// [`FormatError::BadKey`].
    pub fn from_pem(pem: &str) -> Result<Self, FormatError> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(Self::EcdsaP256(k));
        }
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem)
            .map(Self::Ed25519)
            .map_err(|_| FormatError::BadKey)
    }

    /// Its algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Self::EcdsaP256(_) => Algorithm::EcdsaP256,
            Self::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// Verifies a `Sign` signature over `digest`: ECDSA over the digest as the prehash (so a
    /// SHA-256 digest of a file verifies like `cosign verify-blob`), Ed25519 over the digest
    /// bytes as the message.
    ///
    /// # Errors
    /// [`FormatError::BadSignature`], [`FormatError::Mismatch`].
    pub fn verify_digest(&self, digest: &[u8], sig: &[u8]) -> Result<(), FormatError> {
        match self {
            Self::EcdsaP256(k) => {
                let sig =
                    p256::ecdsa::Signature::from_der(sig).map_err(|_| FormatError::BadSignature)?;
                k.verify_prehash(digest, &sig)
                    .map_err(|_| FormatError::Mismatch)
            }
            Self::Ed25519(k) => self.verify_ed25519(k, digest, sig),
        }
    }

    /// Verifies a signature over a whole message (DSSE: the PAE): ECDSA with SHA-256.
    ///
    /// # Errors
    /// [`FormatError::BadSignature`], [`FormatError::Mismatch`].
    pub fn verify_message(&self, msg: &[u8], sig: &[u8]) -> Result<(), FormatError> {
        match self {
            Self::EcdsaP256(k) => {
                let sig =
                    p256::ecdsa::Signature::from_der(sig).map_err(|_| FormatError::BadSignature)?;
                k.verify(msg, &sig).map_err(|_| FormatError::Mismatch)
            }
            Self::Ed25519(k) => self.verify_ed25519(k, msg, sig),
        }
    }

    fn verify_ed25519(
        &self,
        k: &ed25519_dalek::VerifyingKey,
        msg: &[u8],
        sig: &[u8],
    ) -> Result<(), FormatError> {
        let sig =
            ed25519_dalek::Signature::from_slice(sig).map_err(|_| FormatError::BadSignature)?;
        k.verify_strict(msg, &sig)
            .map_err(|_| FormatError::Mismatch)
    }
}

/// DSSE v1 pre-authentication encoding of `payload_type` and `body`.
#[must_use]
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// One signature of a DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsseSignature {
    /// Key id (see [`keyid`]).
    pub keyid: String,
    /// Base64 (standard, padded) signature over the PAE.
    pub sig: String,
}

/// A DSSE envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Base64 (standard, padded) of the signed body.
    pub payload: String,
    /// Type of the body (`application/vnd.in-toto+json`).
    pub payload_type: String,
    /// Signatures over `PAE(payloadType, payload)`.
    pub signatures: Vec<DsseSignature>,
}

impl Envelope {
    /// The envelope of `body` signed by `keyid` with `sig`.
    #[must_use]
    pub fn new(payload_type: &str, body: &[u8], keyid: &str, sig: &[u8]) -> Self {
        Self {
            payload: STANDARD.encode(body),
            payload_type: payload_type.to_owned(),
            signatures: vec![DsseSignature {
                keyid: keyid.to_owned(),
                sig: STANDARD.encode(sig),
            }],
        }
    }

    /// The body, decoded.
    ///
    /// # Errors
    /// [`FormatError::BadEnvelope`] when the payload is not base64.
    pub fn body(&self) -> Result<Vec<u8>, FormatError> {
        STANDARD
            .decode(&self.payload)
            .map_err(|_| FormatError::BadEnvelope("payload is not base64"))
    }

    /// Verifies that some signature of the envelope is `key`'s over the PAE.
    ///
    /// # Errors
    /// [`FormatError::BadEnvelope`], or [`FormatError::Mismatch`] when none verifies.
    pub fn verify(&self, key: &PublicKey) -> Result<Vec<u8>, FormatError> {
        let body = self.body()?;
        let msg = pae(&self.payload_type, &body);
        for s in &self.signatures {
            let Ok(sig) = STANDARD.decode(&s.sig) else {
                continue;
            };
            if key.verify_message(&msg, &sig).is_ok() {
                return Ok(body);
            }
        }
        Err(FormatError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // The DSSE protocol's test vector.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn raw_ecdsa_signatures_of_the_wrong_length_are_refused() {
        assert!(ecdsa_der_from_raw(&[1; 63]).is_err());
        assert!(ecdsa_der_from_raw(&[0; 64]).is_err(), "zero scalars");
        let der = ecdsa_der_from_raw(&[1; 64]).unwrap();
        assert_eq!(der[0], 0x30, "a DER SEQUENCE");
    }

    #[test]
    fn an_ed25519_key_round_trips_through_pem() {
        let raw = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let (der, pem) = spki(Algorithm::Ed25519, raw.as_bytes()).unwrap();
        assert_eq!(keyid(&der).len(), 64);
        let key = PublicKey::from_pem(&pem).unwrap();
        assert_eq!(key.algorithm(), Algorithm::Ed25519);
    }
}
