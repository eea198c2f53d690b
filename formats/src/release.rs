//! Recipient release (docs/attestation.md): a data key sealed by HPKE (RFC 9180) to a public key
//! that an attestation result binds to a TEE, so the host relaying the response never sees it.
//!
//! What broker and clients must agree on lives here: the suite, the wire form of
//! `ciphertext_for_recipient` (`enc ‖ ct`, exactly what single-shot HPKE and PyCA's
//! `Suite.encrypt` produce), and the `info` string binding the sealed key to the call that
//! released it. The AEAD's associated data is empty (PyCA's public API has none); every binding
//! is in `info`.
//!
//! ```text
//! info = "keybroker/hpke-release/v1" ‖ SHA-256( lp16(op) ‖ lp16(key) ‖ u32be(version)
//!                                                ‖ lp16(lease_id) ‖ u8(suite) )
//! op   = "GenerateDataKey" | "Decrypt";   lp16(s) = u16be(len(s)) ‖ s
//! ```

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, Kem as _, OpModeR, OpModeS, Serializable as _};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The only suite: base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM
/// (`HPKE_SUITE_X25519_SHA256_AES256GCM` on the wire).
pub const SUITE_X25519_SHA256_AES256GCM: u8 = 1;
/// Bytes of an X25519 public key (and of the encapsulated key that starts a sealed key).
pub const X25519_KEY_LEN: usize = 32;
/// Bytes of `ciphertext_for_recipient` for a 32-byte data key: enc 32 ‖ ct 32 ‖ tag 16.
pub const SEALED_DATA_KEY_LEN: usize = 80;

const INFO_LABEL: &[u8] = b"keybroker/hpke-release/v1";

/// The call a key was released by, as bound into `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOp {
    /// `DataKeys.GenerateDataKey`.
    GenerateDataKey,
    /// `DataKeys.Decrypt`.
    Decrypt,
}

impl ReleaseOp {
    /// The name bound into `info`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GenerateDataKey => "GenerateDataKey",
            Self::Decrypt => "Decrypt",
        }
    }
}

/// Why a sealed key could not be made or opened. Says nothing about key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// The public or private key is not a 32-byte X25519 key.
    #[error("not an X25519 key")]
    BadKey,
    /// The sealed key is shorter than an encapsulated key plus a tag.
    #[error("sealed key too short")]
    TooShort,
    /// The sealed key does not open with this private key and these call facts.
    #[error("sealed key does not open (wrong private key, or another call's key)")]
    Open,
    /// The HPKE seal failed (randomness or key encapsulation).
    #[error("HPKE seal failed")]
    Seal,
}

fn lp16(h: &mut Sha256, s: &[u8]) {
    // Key names, lease ids and op names are far below 64 KiB; a longer one is cut in the
    // length only (never happens at the edges that call this).
    h.update(u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
    h.update(s);
}

/// The HPKE `info` of a release: binds the sealed key to its op, key, version and lease.
#[must_use]
pub fn info(op: ReleaseOp, key: &str, version: u32, lease_id: &str, suite: u8) -> Vec<u8> {
    let mut h = Sha256::new();
    lp16(&mut h, op.as_str().as_bytes());
    lp16(&mut h, key.as_bytes());
    h.update(version.to_be_bytes());
    lp16(&mut h, lease_id.as_bytes());
    h.update([suite]);
    let mut out = INFO_LABEL.to_vec();
    out.extend_from_slice(&h.finalize());
    out
}

/// Seals `data_key` to the X25519 public key `recipient` (32 bytes): `enc ‖ ct`.
///
/// # Errors
/// [`ReleaseError::BadKey`] for a key that is not 32 bytes (or a low-order point),
/// [`ReleaseError::Seal`] if encapsulation fails.
pub fn seal(recipient: &[u8], info: &[u8], data_key: &[u8]) -> Result<Vec<u8>, ReleaseError> {
    if recipient.len() != X25519_KEY_LEN {
        return Err(ReleaseError::BadKey);
    }
    let pk = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| ReleaseError::BadKey)?;
    let (enc, ct) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk,
        info,
        data_key,
        b"",
    )
    .map_err(|_| ReleaseError::Seal)?;
    let mut out = enc.to_bytes().to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a sealed key with the X25519 private key `secret` (32 bytes).
///
/// # Errors
/// [`ReleaseError::BadKey`], [`ReleaseError::TooShort`], or [`ReleaseError::Open`] when the
/// key, the `info` or the bytes are not the ones it was sealed with.
pub fn open(secret: &[u8], info: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, ReleaseError> {
    if secret.len() != X25519_KEY_LEN {
        return Err(ReleaseError::BadKey);
    }
    if sealed.len() < X25519_KEY_LEN + 16 {
        return Err(ReleaseError::TooShort);
    }
    let sk = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(secret)
        .map_err(|_| ReleaseError::BadKey)?;
    let (enc, ct) = sealed.split_at(X25519_KEY_LEN);
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(enc)
        .map_err(|_| ReleaseError::Open)?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk,
        &enc,
        info,
        ct,
        b"",
    )
    .map(Zeroizing::new)
    .map_err(|_| ReleaseError::Open)
}

/// The X25519 public key of the private key `secret` (32 bytes).
///
/// # Errors
/// [`ReleaseError::BadKey`] for a key that is not 32 bytes.
pub fn public_key(secret: &[u8]) -> Result<[u8; X25519_KEY_LEN], ReleaseError> {
    if secret.len() != X25519_KEY_LEN {
        return Err(ReleaseError::BadKey);
    }
    let sk = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(secret)
        .map_err(|_| ReleaseError::BadKey)?;
    let pk = X25519HkdfSha256::sk_to_pk(&sk).to_bytes();
    let mut out = [0u8; X25519_KEY_LEN];
    out.copy_from_slice(&pk);
    Ok(out)
}

/// A fresh X25519 key pair: (private, public). For tests and `keybroker dev-attestation`.
#[must_use]
pub fn generate_keypair() -> (Zeroizing<[u8; X25519_KEY_LEN]>, [u8; X25519_KEY_LEN]) {
    let (sk, pk) = X25519HkdfSha256::gen_keypair();
    let mut secret = Zeroizing::new([0u8; X25519_KEY_LEN]);
    secret.copy_from_slice(&sk.to_bytes());
    let mut public = [0u8; X25519_KEY_LEN];
    public.copy_from_slice(&pk.to_bytes());
    (secret, public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_every_binding_matters() {
        let (sk, pk) = generate_keypair();
        assert_eq!(public_key(sk.as_ref()).unwrap(), pk);
        let i = info(ReleaseOp::GenerateDataKey, "models/m", 3, "lease-1", 1);
        let dek = [7u8; 32];
        let sealed = seal(&pk, &i, &dek).unwrap();
        assert_eq!(sealed.len(), SEALED_DATA_KEY_LEN);
        assert_eq!(open(sk.as_ref(), &i, &sealed).unwrap().as_slice(), &dek);
        for other in [
            info(ReleaseOp::Decrypt, "models/m", 3, "lease-1", 1),
            info(ReleaseOp::GenerateDataKey, "models/n", 3, "lease-1", 1),
            info(ReleaseOp::GenerateDataKey, "models/m", 4, "lease-1", 1),
            info(ReleaseOp::GenerateDataKey, "models/m", 3, "lease-2", 1),
            info(ReleaseOp::GenerateDataKey, "models/m", 3, "lease-1", 2),
        ] {
            assert_eq!(open(sk.as_ref(), &other, &sealed), Err(ReleaseError::Open));
        }
        let (other_sk, _) = generate_keypair();
        assert_eq!(
            open(other_sk.as_ref(), &i, &sealed),
            Err(ReleaseError::Open)
        );
        let mut flipped = sealed.clone();
        flipped[40] ^= 1;
        assert_eq!(open(sk.as_ref(), &i, &flipped), Err(ReleaseError::Open));
        assert_eq!(
            open(sk.as_ref(), &i, &sealed[..47]),
            Err(ReleaseError::TooShort)
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(seal(&[1; 31], b"", &[0; 32]), Err(ReleaseError::BadKey));
        assert_eq!(
            open(&[1; 33], b"", &[0; 80]).err(),
            Some(ReleaseError::BadKey)
        );
        assert_eq!(public_key(&[]), Err(ReleaseError::BadKey));
    }

    /// Pins the `info` layout (the Python client computes the same bytes; its test holds
    /// this value too).
    #[test]
    fn info_is_pinned() {
        let i = info(
            ReleaseOp::GenerateDataKey,
            "models/confidential",
            1,
            "l-1",
            1,
        );
        assert_eq!(&i[..INFO_LABEL.len()], INFO_LABEL);
        assert_eq!(i.len(), INFO_LABEL.len() + 32);
        let mut h = Sha256::new();
        h.update([0, 15]);
        h.update(b"GenerateDataKey");
        h.update([0, 19]);
        h.update(b"models/confidential");
        h.update([0, 0, 0, 1]);
        h.update([0, 3]);
        h.update(b"l-1");
        h.update([1]);
        assert_eq!(&i[INFO_LABEL.len()..], &h.finalize()[..]);
    }
}
