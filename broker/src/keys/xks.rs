//! AWS KMS External Key Store operations on XKS-purpose keys (`docs/xks.md`): AES-256-GCM in
//! the HSM under the key's newest version, with the XKS API's AAD layout and a
//! `ciphertextMetadata` that names the version, so a rotated key still decrypts what KMS holds.
//!
//! The layouts here are stable forever: KMS stores our IV, tag and metadata in its own
//! ciphertexts. A change needs a new metadata format byte.
//!
//! - `ciphertextMetadata` = `0x01 ‖ u32be(version)` (5 bytes; the spec allows up to 20).
//! - HSM AAD = `u16be(len(aad)) ‖ aad ‖ u8(len(metadata)) ‖ metadata` (XKS spec, Encrypt: the
//!   length prefixes stop a caller moving bytes between AAD and metadata).
//! - CDIV = SHA-256(aad ‖ metadata ‖ iv ‖ ciphertext ‖ tag) (XKS spec, Appendix C), computed
//!   from the HSM's output before the verifying decrypt.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::hsm::{HsmError, SealInput, SealedGcm};
use crate::store::{KeyRecord, KeyState, Purpose, ReleaseGate, VersionState};

use super::KeyError;
use super::name::KeyName;
use super::service::{Caller, GCM_LIMIT_REACHED, GCM_RANDOM_IV_LIMIT, KeyService};

/// The label that sets an XKS key's usage: `encrypt,decrypt` (the default when absent),
/// `encrypt`, `decrypt` or `none`.
pub const XKS_USAGE_LABEL: &str = "xks-usage";
/// Format byte of our `ciphertextMetadata`.
const METADATA_V1: u8 = 1;
/// Length of our `ciphertextMetadata`.
pub const METADATA_LEN: usize = 5;
/// GCM tag length.
pub const TAG_LEN: usize = 16;

/// What an XKS key may be used for (its `keyUsage` in GetKeyMetadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XksUsage {
    /// `ENCRYPT`.
    pub encrypt: bool,
    /// `DECRYPT`.
    pub decrypt: bool,
}

impl XksUsage {
    /// The usage of `key`, from its [`XKS_USAGE_LABEL`]. An unknown value allows nothing
    /// (fail closed) and is logged.
    #[must_use]
    pub fn of(key: &KeyRecord) -> Self {
        let (encrypt, decrypt) = match key.labels.get(XKS_USAGE_LABEL).map(String::as_str) {
            None | Some("encrypt,decrypt" | "decrypt,encrypt") => (true, true),
            Some("encrypt") => (true, false),
            Some("decrypt") => (false, true),
            Some("none") => (false, false),
            Some(other) => {
                tracing::warn!(key = %key.name, value = %other.escape_debug(),
                    "unknown xks-usage label value: the key allows neither encrypt nor decrypt");
                (false, false)
            }
        };
        Self { encrypt, decrypt }
    }
}

/// Whether `name` is a valid keybroker key name that is also an XKS `keyId`
/// (`[A-Za-z0-9._-]{1,128}`): a key name without `/`.
#[must_use]
pub fn is_xks_key_id(name: &str) -> bool {
    !name.contains('/') && KeyName::parse(name).is_ok()
}

/// Our `ciphertextMetadata` for `version`.
#[must_use]
pub fn metadata(version: u32) -> [u8; METADATA_LEN] {
    let v = version.to_be_bytes();
    [METADATA_V1, v[0], v[1], v[2], v[3]]
}

/// The version our `ciphertextMetadata` names; `None` for anything we did not write.
#[must_use]
pub fn parse_metadata(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [METADATA_V1, a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// The AAD the HSM sees. `aad` is at most 8 KiB and `metadata` at most 20 bytes (checked at
/// the edge); longer inputs are cut to what the length prefixes can state, which then fails
/// authentication rather than aliasing another input.
#[must_use]
pub fn hsm_aad(aad: &[u8], metadata: &[u8]) -> Vec<u8> {
    let aad = &aad[..aad.len().min(usize::from(u16::MAX))];
    let metadata = &metadata[..metadata.len().min(usize::from(u8::MAX))];
    let mut out = Vec::with_capacity(3 + aad.len() + metadata.len());
    out.extend_from_slice(&u16::try_from(aad.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(aad);
    out.push(u8::try_from(metadata.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(metadata);
    out
}

/// The ciphertext data integrity value (XKS spec, Appendix C).
#[must_use]
pub fn cdiv(aad: &[u8], metadata: &[u8], iv: &[u8], ciphertext: &[u8], tag: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [aad, metadata, iv, ciphertext, tag] {
        h.update(part);
    }
    h.finalize().into()
}

/// What an XKS encrypt returns.
#[derive(Debug, Clone)]
pub struct XksSealed {
    /// Key version used.
    pub version: u32,
    /// 96-bit IV from the HSM.
    pub iv: [u8; 12],
    /// Ciphertext (as long as the plaintext).
    pub ciphertext: Vec<u8>,
    /// GCM tag.
    pub tag: [u8; TAG_LEN],
    /// Our `ciphertextMetadata`.
    pub metadata: [u8; METADATA_LEN],
    /// The CDIV, when asked for (computed before the verifying decrypt).
    pub cdiv: Option<[u8; 32]>,
}

/// What an XKS decrypt needs besides the key.
pub struct XksCiphertext<'a> {
    /// The request's AAD (empty when absent).
    pub aad: &'a [u8],
    /// The request's `ciphertextMetadata` (empty when absent).
    pub metadata: &'a [u8],
    /// 96-bit IV.
    pub iv: [u8; 12],
    /// Ciphertext.
    pub ciphertext: &'a [u8],
    /// GCM tag.
    pub tag: [u8; TAG_LEN],
}

impl KeyService {
    /// XKS Encrypt: AES-256-GCM under the newest enabled version of the XKS key `key`, IV
    /// from the HSM. With `cdiv`, the CDIV is computed from the HSM's output and the output is
    /// then decrypted in the HSM and compared with the plaintext (XKS spec, Appendix C); a
    /// mismatch is [`KeyError::SelfCheck`]. Passes the release gate (which counts the GCM use)
    /// before returning.
    ///
    /// # Errors
    /// [`KeyError::Precondition`] for a key or version that is not usable,
    /// [`KeyError::Hsm`], [`KeyError::SelfCheck`], and the gate's errors.
    pub async fn xks_encrypt(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        aad: &[u8],
        plaintext: Zeroizing<Vec<u8>>,
        cdiv_requested: bool,
    ) -> Result<XksSealed, KeyError> {
        usable(key)?;
        let name = KeyName::parse(&key.name)?;
        let version = key
            .primary_version()
            .ok_or_else(|| KeyError::Precondition("key has no enabled version".into()))?;
        if key.version(version).map_or(0, |v| v.wrap_count) >= GCM_RANDOM_IV_LIMIT - 1 {
            return Err(KeyError::Precondition(GCM_LIMIT_REACHED.into()));
        }
        let meta = metadata(version);
        let label = name.hsm_label(version);
        let pool = &self.hsm_for(key)?.pool;
        let SealedGcm {
            plaintext,
            iv,
            mut sealed,
        } = pool
            .seal_gcm(&label, hsm_aad(aad, &meta), SealInput::Given(plaintext))
            .await?;
        let split = sealed
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(KeyError::SelfCheck)?;
        let tag: [u8; TAG_LEN] = sealed[split..]
            .try_into()
            .map_err(|_| KeyError::SelfCheck)?;
        let cdiv = cdiv_requested.then(|| cdiv(aad, &meta, &iv, &sealed[..split], &tag));
        if cdiv_requested {
            let opened = pool
                .decrypt_gcm(&label, iv, hsm_aad(aad, &meta), sealed.clone())
                .await
                .map_err(|e| match e {
                    HsmError::DecryptFailed => KeyError::SelfCheck,
                    other => KeyError::Hsm(other),
                })?;
            if !bool::from(opened.as_slice().ct_eq(plaintext.as_slice())) {
                return Err(KeyError::SelfCheck);
            }
        }
        sealed.truncate(split);
        let gate = ReleaseGate {
            key: &key.name,
            wrap_version: Some(version),
            open_version: None,
            lease: None,
            who: caller.who(),
            now: self.clock.now(),
        };
        let count = self.release(caller, gate).await?;
        if count >= self.settings.rotate_after_wraps && version == key.latest_version() {
            self.spawn_wrap_rotation(name, version, count);
        }
        Ok(XksSealed {
            version,
            iv,
            ciphertext: sealed,
            tag,
            metadata: meta,
            cdiv,
        })
    }

    /// XKS Decrypt: the version comes from our `ciphertextMetadata`. Passes the release gate
    /// before returning the plaintext.
    ///
    /// # Errors
    /// [`KeyError::DecryptFailed`] for metadata we did not write, a version that does not
    /// exist (or is destroyed) and a ciphertext that does not authenticate;
    /// [`KeyError::Precondition`] for a disabled key or version, or one below
    /// `min_decryption_version`; [`KeyError::Hsm`] and the gate's errors.
    pub async fn xks_decrypt(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        input: XksCiphertext<'_>,
    ) -> Result<(u32, Zeroizing<Vec<u8>>), KeyError> {
        usable(key)?;
        let version = parse_metadata(input.metadata).ok_or(KeyError::DecryptFailed)?;
        match key.version(version).map(|v| v.state) {
            Some(VersionState::Enabled) => {}
            Some(VersionState::Disabled) => {
                return Err(KeyError::Precondition(format!(
                    "key version {version} is disabled"
                )));
            }
            // Never made, or crypto-shredded: nothing can open it, ever.
            Some(VersionState::Destroyed | VersionState::PendingCreate) | None => {
                return Err(KeyError::DecryptFailed);
            }
        }
        if version < key.min_decryption_version {
            return Err(KeyError::Precondition(format!(
                "key version {version} is below min_decryption_version {}",
                key.min_decryption_version
            )));
        }
        let name = KeyName::parse(&key.name)?;
        let mut sealed = Vec::with_capacity(input.ciphertext.len() + TAG_LEN);
        sealed.extend_from_slice(input.ciphertext);
        sealed.extend_from_slice(&input.tag);
        let plaintext = self
            .hsm_for(key)?
            .pool
            .decrypt_gcm(
                &name.hsm_label(version),
                input.iv,
                hsm_aad(input.aad, input.metadata),
                sealed,
            )
            .await
            .map_err(|e| match e {
                HsmError::DecryptFailed => KeyError::DecryptFailed,
                other => KeyError::Hsm(other),
            })?;
        let gate = ReleaseGate {
            key: &key.name,
            wrap_version: None,
            open_version: Some(version),
            lease: None,
            who: caller.who(),
            now: self.clock.now(),
        };
        self.release(caller, gate).await?;
        Ok((version, plaintext))
    }
}

/// The key is an enabled XKS key.
fn usable(key: &KeyRecord) -> Result<(), KeyError> {
    if key.purpose != Purpose::Xks {
        return Err(KeyError::NotFound);
    }
    match key.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KeyError::Precondition("key is disabled".into())),
        KeyState::PendingDestruction => {
            Err(KeyError::Precondition("key is pending destruction".into()))
        }
        KeyState::Destroyed => Err(KeyError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    #[test]
    fn cdiv_matches_the_spec_example() {
        // XKS Proxy API spec, Appendix C.
        let aad = b"project=nile,department=marketing";
        let meta = b"key_version=1";
        let iv = STANDARD.decode("HMrlRw85cAJUd5Ax").unwrap();
        let ct = STANDARD.decode("ghxkK1txeDNn3q8Y").unwrap();
        let tag = STANDARD.decode("vBxN2ncH1oEkR8WVXpmyYQ==").unwrap();
        let got = cdiv(aad, meta, &iv, &ct, &tag);
        assert_eq!(
            STANDARD.encode(got),
            "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="
        );
    }

    #[test]
    fn hsm_aad_keeps_aad_and_metadata_apart() {
        assert_eq!(hsm_aad(b"", b""), vec![0, 0, 0]);
        assert_eq!(hsm_aad(b"ab", b"m"), vec![0, 2, b'a', b'b', 1, b'm']);
        // Moving a byte from the AAD into the metadata changes the HSM's AAD.
        assert_ne!(hsm_aad(b"abm", b""), hsm_aad(b"ab", b"m"));
    }

    #[test]
    fn metadata_round_trips_and_rejects_what_we_did_not_write() {
        assert_eq!(parse_metadata(&metadata(7)), Some(7));
        assert_eq!(STANDARD.encode(metadata(1)), "AQAAAAE=");
        assert_eq!(parse_metadata(b""), None);
        assert_eq!(parse_metadata(&[2, 0, 0, 0, 1]), None);
        assert_eq!(parse_metadata(&[1, 0, 0, 1]), None);
        assert_eq!(parse_metadata(&[1, 0, 0, 0, 1, 0]), None);
    }

    #[test]
    fn xks_key_ids_are_key_names_without_slashes() {
        assert!(is_xks_key_id("xks-main"));
        assert!(is_xks_key_id("a.b-c1"));
        assert!(is_xks_key_id("a_b"));
        assert!(!is_xks_key_id("models/a"));
        assert!(!is_xks_key_id("Upper"));
        assert!(!is_xks_key_id(""));
        assert!(!is_xks_key_id(&"a".repeat(129)));
    }
}
