//! Ciphertext envelope v1: a self-describing, versioned binary format with a strict parser.
//!
//! Layout (docs/ciphertext-format.md has the full table and rationale):
//! `"KB" ‖ 0x01 ‖ u8 N ‖ N bytes key name ‖ u32 BE key version ‖ 12-byte IV ‖ ciphertext ‖ 16-byte tag`.
//! The header (everything before the IV) is bound into the AES-GCM AAD together with the
//! canonical encryption context, so a ciphertext cannot be replayed under another key name,
//! version, format or context.

use super::KeyInputError;
use super::context::EncryptionContext;
use super::name::{KeyName, MAX_KEY_NAME_LEN};

/// The two magic bytes, `"KB"`.
pub const MAGIC: [u8; 2] = *b"KB";
/// The only format version this parser accepts.
pub const FORMAT_V1: u8 = 0x01;
/// AES-GCM IV length.
pub const IV_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Largest plaintext a v1 envelope carries (64 KiB: data keys and SEAL payloads).
pub const MAX_PLAINTEXT_LEN: usize = 65_536;
/// Domain-separation prefix of the AAD.
pub const AAD_PREFIX: &[u8] = b"keybroker/v1/envelope\0";
/// Smallest valid envelope: 1-byte name, empty plaintext.
pub const MIN_ENVELOPE_LEN: usize = 2 + 1 + 1 + 1 + 4 + IV_LEN + TAG_LEN;
/// Largest valid envelope: 128-byte name, 64 KiB plaintext.
pub const MAX_ENVELOPE_LEN: usize =
    2 + 1 + 1 + MAX_KEY_NAME_LEN + 4 + IV_LEN + MAX_PLAINTEXT_LEN + TAG_LEN;

/// A parsed v1 envelope. `sealed` is ciphertext ‖ tag as AES-GCM produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The key-encryption key that wrapped the payload.
    pub key: KeyName,
    /// The key version (≥ 1).
    pub version: u32,
    /// The 96-bit AES-GCM IV.
    pub iv: [u8; IV_LEN],
    /// Ciphertext followed by the 16-byte tag: `TAG_LEN..=MAX_PLAINTEXT_LEN + TAG_LEN` bytes.
    pub sealed: Vec<u8>,
}

/// Why bytes are not a v1 envelope. Each rule has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Input longer than [`MAX_ENVELOPE_LEN`]; rejected before looking inside.
    #[error("ciphertext is {len} bytes; at most {MAX_ENVELOPE_LEN} are allowed")]
    TooLong {
        /// Input length.
        len: usize,
    },
    /// The input ends inside a fixed-size field.
    #[error("ciphertext is truncated: it ends inside the {field} ({len} bytes in total)")]
    Truncated {
        /// The field that is cut short.
        field: &'static str,
        /// Input length.
        len: usize,
    },
    /// The first two bytes are not `"KB"`.
    #[error("not a keybroker ciphertext (bad magic bytes)")]
    BadMagic,
    /// A format version this parser does not know.
    #[error("unsupported ciphertext format version {version}; this broker reads version 1")]
    UnsupportedVersion {
        /// The version byte found.
        version: u8,
    },
    /// The key-name length byte is 0 or above 128.
    #[error("key name length {len} is out of range 1..=128")]
    KeyNameLength {
        /// The length byte found.
        len: u8,
    },
    /// The key name bytes are not a valid key name.
    #[error("invalid key name in ciphertext: {0}")]
    KeyName(#[source] KeyInputError),
    /// Key version 0 (versions start at 1).
    #[error("key version 0 is invalid; versions start at 1")]
    KeyVersionZero,
    /// Fewer than 16 bytes after the IV: no room for the tag.
    #[error("sealed part is {len} bytes; at least {TAG_LEN} (the tag) are required")]
    SealedTooShort {
        /// Sealed part length.
        len: usize,
    },
    /// More than 64 KiB of ciphertext plus the tag.
    #[error("sealed part is {len} bytes; at most {} are allowed", MAX_PLAINTEXT_LEN + TAG_LEN)]
    SealedTooLong {
        /// Sealed part length.
        len: usize,
    },
}

impl Envelope {
    /// Parses a v1 envelope. Everything after the IV is the sealed part; its length is checked
    /// against the limits, and its integrity is left to AES-GCM.
    ///
    /// # Errors
    /// One [`EnvelopeError`] variant per broken rule, checked in byte order after the total
    /// length bound.
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let len = bytes.len();
        if len > MAX_ENVELOPE_LEN {
            return Err(EnvelopeError::TooLong { len });
        }
        let mut r = Reader { bytes, len };
        if r.take(2, "magic")? != MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        let version = r.byte("format version")?;
        if version != FORMAT_V1 {
            return Err(EnvelopeError::UnsupportedVersion { version });
        }
        let name_len = r.byte("key name length")?;
        if name_len == 0 || usize::from(name_len) > MAX_KEY_NAME_LEN {
            return Err(EnvelopeError::KeyNameLength { len: name_len });
        }
        let name = r.take(usize::from(name_len), "key name")?;
        let key = std::str::from_utf8(name)
            .map_err(|e| KeyInputError::NameBadChar {
                position: e.valid_up_to(),
            })
            .and_then(KeyName::parse)
            .map_err(EnvelopeError::KeyName)?;
        let mut version_be = [0u8; 4];
        version_be.copy_from_slice(r.take(4, "key version")?);
        let key_version = u32::from_be_bytes(version_be);
        if key_version == 0 {
            return Err(EnvelopeError::KeyVersionZero);
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(r.take(IV_LEN, "IV")?);
        let sealed = r.bytes;
        if sealed.len() < TAG_LEN {
            return Err(EnvelopeError::SealedTooShort { len: sealed.len() });
        }
        if sealed.len() > MAX_PLAINTEXT_LEN + TAG_LEN {
            return Err(EnvelopeError::SealedTooLong { len: sealed.len() });
        }
        Ok(Self {
            key,
            version: key_version,
            iv,
            sealed: sealed.to_vec(),
        })
    }

    /// Encodes the envelope; `parse(encode(e)) == e` for every valid envelope.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = header_bytes(&self.key, self.version);
        out.reserve(IV_LEN + self.sealed.len());
        out.extend_from_slice(&self.iv);
        out.extend_from_slice(&self.sealed);
        out
    }

    /// The AES-GCM AAD for this envelope under `ctx`; see [`header_aad`].
    #[must_use]
    pub fn aad(&self, ctx: &EncryptionContext) -> Vec<u8> {
        header_aad(&self.key, self.version, ctx)
    }
}

/// The AAD for wrapping under `key` version `version` with context `ctx`, usable before the
/// envelope exists: `"keybroker/v1/envelope\0" ‖ header ‖ canonical context`, where header is
/// every envelope byte before the IV.
#[must_use]
pub fn header_aad(key: &KeyName, version: u32, ctx: &EncryptionContext) -> Vec<u8> {
    let header = header_bytes(key, version);
    let context = ctx.canonical_bytes();
    let mut out = Vec::with_capacity(AAD_PREFIX.len() + header.len() + context.len());
    out.extend_from_slice(AAD_PREFIX);
    out.extend_from_slice(&header);
    out.extend_from_slice(&context);
    out
}

fn header_bytes(key: &KeyName, version: u32) -> Vec<u8> {
    let name = key.as_str().as_bytes();
    let mut out = Vec::with_capacity(4 + name.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_V1);
    // KeyName guarantees 1..=128 bytes.
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name);
    out.extend_from_slice(&version.to_be_bytes());
    out
}

/// A cursor that fails with `Truncated` instead of panicking.
struct Reader<'a> {
    bytes: &'a [u8],
    len: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], EnvelopeError> {
        if self.bytes.len() < n {
            return Err(EnvelopeError::Truncated {
                field,
                len: self.len,
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, EnvelopeError> {
        Ok(self.take(1, field)?.first().copied().unwrap_or_default())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn sample() -> Envelope {
        Envelope {
            key: KeyName::parse("datasets/demo").unwrap(),
            version: 3,
            iv: [0xA5; IV_LEN],
            sealed: vec![0x11; 48],
        }
    }

    fn ctx() -> EncryptionContext {
        let m: HashMap<String, String> = [("dataset".to_owned(), "imagenet".to_owned())].into();
        EncryptionContext::from_map(m).unwrap()
    }

    #[test]
    fn encode_matches_documented_layout() {
        let e = sample();
        let bytes = e.encode();
        assert_eq!(&bytes[..4], b"KB\x01\x0d");
        assert_eq!(&bytes[4..17], b"datasets/demo");
        assert_eq!(&bytes[17..21], &[0, 0, 0, 3]);
        assert_eq!(&bytes[21..33], &[0xA5; 12]);
        assert_eq!(bytes.len(), 33 + 48);
        assert_eq!(Envelope::parse(&bytes).unwrap(), e);
    }

    #[test]
    fn aad_is_prefix_header_and_context() {
        let e = sample();
        let aad = e.aad(&ctx());
        let mut want = b"keybroker/v1/envelope\0".to_vec();
        want.extend_from_slice(&e.encode()[..21]);
        want.extend_from_slice(&ctx().canonical_bytes());
        assert_eq!(aad, want);
        assert_eq!(header_aad(&e.key, 3, &ctx()), aad);
        assert_ne!(e.aad(&EncryptionContext::empty()), aad);
    }

    #[test]
    fn limits_are_the_documented_constants() {
        assert_eq!(MIN_ENVELOPE_LEN, 37);
        assert_eq!(MAX_ENVELOPE_LEN, 65_700);
        let mut e = sample();
        e.key = KeyName::parse(&"k".repeat(128)).unwrap();
        e.sealed = vec![0; MAX_PLAINTEXT_LEN + TAG_LEN];
        assert_eq!(e.encode().len(), MAX_ENVELOPE_LEN);
        assert!(Envelope::parse(&e.encode()).is_ok());
        e.sealed.push(0);
        assert_eq!(
            Envelope::parse(&e.encode()).unwrap_err(),
            EnvelopeError::TooLong {
                len: MAX_ENVELOPE_LEN + 1
            }
        );
        // A short name leaves room under MAX_ENVELOPE_LEN, but the sealed part is still capped.
        let mut short = sample();
        short.sealed = vec![0; MAX_PLAINTEXT_LEN + TAG_LEN + 1];
        assert_eq!(
            Envelope::parse(&short.encode()).unwrap_err(),
            EnvelopeError::SealedTooLong {
                len: MAX_PLAINTEXT_LEN + TAG_LEN + 1
            }
        );
    }

    #[test]
    fn each_rule_has_its_own_error() {
        let good = sample().encode();
        let with = |i: usize, b: u8| {
            let mut v = good.clone();
            v[i] = b;
            Envelope::parse(&v).unwrap_err()
        };
        assert_eq!(with(0, b'X'), EnvelopeError::BadMagic);
        assert_eq!(with(2, 2), EnvelopeError::UnsupportedVersion { version: 2 });
        assert_eq!(with(3, 0), EnvelopeError::KeyNameLength { len: 0 });
        assert_eq!(with(3, 129), EnvelopeError::KeyNameLength { len: 129 });
        assert_eq!(
            with(4, b'D'),
            EnvelopeError::KeyName(KeyInputError::NameBadStart)
        );
        assert_eq!(
            with(5, 0xFF),
            EnvelopeError::KeyName(KeyInputError::NameBadChar { position: 1 })
        );
        let mut v0 = good.clone();
        v0[17..21].copy_from_slice(&[0; 4]);
        assert_eq!(
            Envelope::parse(&v0).unwrap_err(),
            EnvelopeError::KeyVersionZero
        );
        assert_eq!(
            Envelope::parse(&good[..33 + 15]).unwrap_err(),
            EnvelopeError::SealedTooShort { len: 15 }
        );
        assert_eq!(
            Envelope::parse(&good[..20]).unwrap_err(),
            EnvelopeError::Truncated {
                field: "key version",
                len: 20
            }
        );
        assert_eq!(
            Envelope::parse(&[]).unwrap_err(),
            EnvelopeError::Truncated {
                field: "magic",
                len: 0
            }
        );
    }

    #[test]
    fn every_truncation_fails_or_shortens_the_sealed_part() {
        let good = sample().encode();
        let fixed = good.len() - sample().sealed.len() + TAG_LEN;
        for cut in 0..good.len() {
            match Envelope::parse(&good[..cut]) {
                Err(_) => {}
                // Past header+IV+tag the parser cannot see a cut (there is no length field);
                // the shorter sealed part then fails AES-GCM authentication.
                Ok(e) => {
                    assert!(cut >= fixed, "cut at {cut} parsed");
                    assert!(e.sealed.len() < sample().sealed.len());
                }
            }
        }
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (
            "[a-z0-9][a-z0-9_-]{0,20}(/[a-z0-9_-]{1,20}){0,3}",
            1u32..,
            any::<[u8; 12]>(),
            prop::collection::vec(any::<u8>(), TAG_LEN..200),
        )
            .prop_map(|(name, version, iv, sealed)| Envelope {
                key: KeyName::parse(&name).unwrap(),
                version,
                iv,
                sealed,
            })
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(e in arb_envelope()) {
            prop_assert_eq!(Envelope::parse(&e.encode()).unwrap(), e);
        }

        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(e) = Envelope::parse(&bytes) {
                prop_assert_eq!(e.encode(), bytes);
            }
        }

        #[test]
        fn parse_never_panics_on_near_valid_input(
            e in arb_envelope(), at in any::<prop::sample::Index>(), b in any::<u8>(), cut in any::<prop::sample::Index>()
        ) {
            let mut bytes = e.encode();
            let i = at.index(bytes.len());
            bytes[i] = b;
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = Envelope::parse(&bytes);
        }

        #[test]
        fn header_byte_change_fails_or_changes_aad(
            e in arb_envelope(), at in any::<prop::sample::Index>(), delta in 1u8..,
        ) {
            let ctx = ctx();
            let mut bytes = e.encode();
            let header_len = bytes.len() - IV_LEN - e.sealed.len();
            let i = at.index(header_len);
            bytes[i] = bytes[i].wrapping_add(delta);
            if let Ok(changed) = Envelope::parse(&bytes) {
                prop_assert_ne!(changed.aad(&ctx), e.aad(&ctx));
            }
        }
    }
}
