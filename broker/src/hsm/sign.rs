//! Signing key pairs of SIGN-purpose keys inside the HSM: ECDSA P-256 (CKM_EC_KEY_PAIR_GEN,
//! CKM_ECDSA over a digest) and Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA, shared with
//! the checkpoint signer in `eddsa.rs`). Both halves of a pair carry the version's label
//! `kb:<name>:v<n>`; the private half is sensitive, never extractable and signs only. Everything
//! here blocks; the pool runs it on `spawn_blocking` threads only.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::{HsmError, eddsa};

/// DER of the prime256v1 (NIST P-256) OID 1.2.840.10045.3.1.7, the `CKA_EC_PARAMS` value.
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The signature algorithm of a SIGN key, fixed for the key's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignAlgorithm {
    /// ECDSA on NIST P-256; the HSM signs a digest and returns raw `r || s`.
    EcdsaP256,
    /// Pure Ed25519 (RFC 8032) over the message.
    Ed25519,
}

/// Generates a token key pair of `alg` labelled `label` with a random `CKA_ID`.
pub(crate) fn generate(session: &Session, alg: SignAlgorithm, label: &str) -> Result<(), HsmError> {
    match alg {
        SignAlgorithm::Ed25519 => eddsa::generate(session, label).map(drop),
        SignAlgorithm::EcdsaP256 => {
            let id = session
                .generate_random_vec(16)
                .map_err(HsmError::ck("C_GenerateRandom"))?;
            // `keybroker bench --target raw-hsm` writes this template again (but the id) in
            // the CLI's bench/raw_hsm.rs: PKCS#11 is not in the formats crate. Change both.
            let public = [
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(P256_OID.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ];
            let private = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Derive(false),
                Attribute::Unwrap(false),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id),
            ];
            session
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map(drop)
                .map_err(HsmError::ck("C_GenerateKeyPair"))
        }
    }
}

fn key_type(alg: SignAlgorithm) -> KeyType {
    match alg {
        SignAlgorithm::EcdsaP256 => KeyType::EC,
        SignAlgorithm::Ed25519 => KeyType::EC_EDWARDS,
    }
}

/// The one key of `class` and `alg` labelled `label`; `None` when there is none, an error
/// when several are (never pick one of two).
pub(crate) fn find_one(
    session: &Session,
    class: ObjectClass,
    alg: SignAlgorithm,
    label: &str,
) -> Result<Option<ObjectHandle>, HsmError> {
    let found = session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::KeyType(key_type(alg)),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(HsmError::ck("C_FindObjects"))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(HsmError::InvalidRequest {
            reason: "several signing keys carry this label",
        }),
    }
}

/// Signs: ECDSA over `input` (a digest) returning raw `r || s` (64 bytes), or pure Ed25519
/// over `input` (64 bytes).
pub(crate) fn sign(
    session: &Session,
    alg: SignAlgorithm,
    key: ObjectHandle,
    input: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let sig = match alg {
        SignAlgorithm::Ed25519 => eddsa::sign(session, key, input)?,
        SignAlgorithm::EcdsaP256 => session
            .sign(&Mechanism::Ecdsa, key, input)
            .map_err(HsmError::ck("C_Sign"))?,
    };
    if sig.len() != 64 {
        return Err(HsmError::InvalidRequest {
            reason: "the HSM returned a signature of an unexpected length",
        });
    }
    Ok(sig)
}

/// The public key: for P-256 the 65-byte uncompressed SEC1 point, for Ed25519 the 32 bytes.
pub(crate) fn public_key(
    session: &Session,
    alg: SignAlgorithm,
    key: ObjectHandle,
) -> Result<Vec<u8>, HsmError> {
    match alg {
        SignAlgorithm::Ed25519 => eddsa::public_key(session, key).map(|k| k.to_vec()),
        SignAlgorithm::EcdsaP256 => {
            let attrs = session
                .get_attributes(key, &[AttributeType::EcPoint])
                .map_err(HsmError::ck("C_GetAttributeValue"))?;
            let point = attrs.into_iter().find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            });
            p256_point(point.as_deref())
        }
    }
}

/// `CKA_EC_POINT` of a P-256 key: a DER OCTET STRING around the uncompressed point (raw on
/// some modules).
fn p256_point(point: Option<&[u8]>) -> Result<Vec<u8>, HsmError> {
    match point {
        Some([0x04, 0x41, rest @ ..]) if rest.len() == 65 && rest[0] == 0x04 => Ok(rest.to_vec()),
        Some(raw) if raw.len() == 65 && raw[0] == 0x04 => Ok(raw.to_vec()),
        _ => Err(HsmError::InvalidRequest {
            reason: "CKA_EC_POINT is not an uncompressed P-256 point",
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn p256_point_accepts_der_wrapped_and_raw_uncompressed_points_only() {
        let mut raw = vec![0x04];
        raw.extend([7u8; 64]);
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend(&raw);
        assert_eq!(p256_point(Some(&wrapped)).unwrap(), raw);
        assert_eq!(p256_point(Some(&raw)).unwrap(), raw);
        assert!(p256_point(Some(&raw[..33])).is_err());
        assert!(p256_point(None).is_err());
    }
}
