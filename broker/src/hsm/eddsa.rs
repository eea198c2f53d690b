//! Ed25519 key pairs inside the HSM (CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA): the audit
//! checkpoint signer. The private key is sensitive and never extractable; only the public key
//! (`CKA_EC_POINT`) and signatures leave.

use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::HsmError;

/// DER of the edwards25519 curve OID 1.3.101.112 (RFC 8410), the `CKA_EC_PARAMS` value.
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// The Ed25519 keys of `class` (public or private) carrying `label`, and `id` when given.
pub(crate) fn find_all(
    session: &Session,
    class: ObjectClass,
    label: &str,
    id: Option<&[u8]>,
) -> Result<Vec<ObjectHandle>, HsmError> {
    let mut template = vec![
        Attribute::Class(class),
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    if let Some(id) = id {
        template.push(Attribute::Id(id.to_vec()));
    }
    session
        .find_objects(&template)
        .map_err(HsmError::ck("C_FindObjects"))
}

/// The `CKA_ID` of `key`.
pub(crate) fn id_of(session: &Session, key: ObjectHandle) -> Result<Vec<u8>, HsmError> {
    let attrs = session
        .get_attributes(key, &[AttributeType::Id])
        .map_err(HsmError::ck("C_GetAttributeValue"))?;
    Ok(attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Id(id) => Some(id),
            _ => None,
        })
        .unwrap_or_default())
}

/// Generates an Ed25519 token key pair labelled `label` with a fresh random `CKA_ID`, which it
/// returns; the private half signs only.
pub(crate) fn generate(session: &Session, label: &str) -> Result<Vec<u8>, HsmError> {
    let id = session
        .generate_random_vec(16)
        .map_err(HsmError::ck("C_GenerateRandom"))?;
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(ED25519_OID.to_vec()),
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
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
    ];
    session
        .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
        .map_err(HsmError::ck("C_GenerateKeyPair"))?;
    Ok(id)
}

/// A pure Ed25519 signature (RFC 8032) of `msg`.
pub(crate) fn sign(session: &Session, key: ObjectHandle, msg: &[u8]) -> Result<Vec<u8>, HsmError> {
    let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
    session
        .sign(&mechanism, key, msg)
        .map_err(HsmError::ck("C_Sign"))
}

/// The 32-byte public key from `CKA_EC_POINT` (a DER OCTET STRING, or raw on some modules).
pub(crate) fn public_key(session: &Session, key: ObjectHandle) -> Result<[u8; 32], HsmError> {
    let attrs = session
        .get_attributes(key, &[AttributeType::EcPoint])
        .map_err(HsmError::ck("C_GetAttributeValue"))?;
    let point = attrs.into_iter().find_map(|a| match a {
        Attribute::EcPoint(p) => Some(p),
        _ => None,
    });
    let raw = match point.as_deref() {
        Some([0x04, 0x20, rest @ ..]) if rest.len() == 32 => rest,
        Some(raw) if raw.len() == 32 => raw,
        _ => {
            return Err(HsmError::InvalidRequest {
                reason: "CKA_EC_POINT is not an Ed25519 public key",
            });
        }
    };
    let mut out = [0; 32];
    out.copy_from_slice(raw);
    Ok(out)
}
