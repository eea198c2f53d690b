//! The KBEF v1 header (docs/file-format.md): canonical encoding and a bounded parser. Every
//! length read from a file is checked against its limit before it is used.

use std::collections::BTreeMap;

use super::FileFormatError as E;

/// `"KBEF"`.
pub const MAGIC: [u8; 4] = *b"KBEF";
/// The only format version.
pub const VERSION: u8 = 1;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Random per-file nonce prefix length.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Random per-file HKDF salt length.
pub const SALT_LEN: usize = 32;
/// Data key length (AES-256).
pub const DATA_KEY_LEN: usize = 32;
/// Smallest ciphertext segment size.
pub const MIN_SEGMENT_SIZE: u32 = 4096;
/// Largest ciphertext segment size (bounds the reader's one segment buffer).
pub const MAX_SEGMENT_SIZE: u32 = 16 * 1024 * 1024;
/// Default ciphertext segment size.
pub const DEFAULT_SEGMENT_SIZE: u32 = 1024 * 1024;
/// Largest header.
pub const MAX_HEADER_LEN: usize = 16384;
/// Smallest possible header.
pub const MIN_HEADER_LEN: usize = 58;
/// Bytes before the header length is known: magic, version, header length.
pub const PREFIX_LEN: usize = 9;
const MAX_KEY_NAME_LEN: usize = 128;
const MAX_CONTEXT_PAIRS: usize = 16;
const MAX_CONTEXT_KEY_LEN: usize = 256;
const MAX_CONTEXT_VALUE_LEN: usize = 256;
const MAX_WRAPPED_KEY_LEN: usize = 1024;

/// A KBEF header and its exact encoding (the HKDF info).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Ciphertext segment size S.
    pub segment_size: u32,
    /// HKDF salt.
    pub salt: [u8; SALT_LEN],
    /// Nonce prefix.
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// Broker key that wrapped the data key.
    pub key_name: String,
    /// Encryption context.
    pub context: BTreeMap<String, String>,
    /// The broker's wrapped data key (opaque).
    pub wrapped_key: Vec<u8>,
    raw: Vec<u8>,
}

impl Header {
    /// Builds and encodes a header (context in canonical byte order).
    ///
    /// # Errors
    /// `Limit` when a field is outside its bounds.
    pub fn new(
        segment_size: u32,
        salt: [u8; SALT_LEN],
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        key_name: &str,
        context: &BTreeMap<String, String>,
        wrapped_key: &[u8],
    ) -> Result<Self, E> {
        check_segment_size(segment_size)?;
        bounded("key name", key_name.len(), 1, MAX_KEY_NAME_LEN)?;
        bounded("context pairs", context.len(), 0, MAX_CONTEXT_PAIRS)?;
        bounded("wrapped key", wrapped_key.len(), 1, MAX_WRAPPED_KEY_LEN)?;
        let mut raw = Vec::with_capacity(128 + wrapped_key.len());
        raw.extend_from_slice(&MAGIC);
        raw.push(VERSION);
        raw.extend_from_slice(&[0; 4]); // header length, filled in below
        raw.extend_from_slice(&segment_size.to_be_bytes());
        raw.extend_from_slice(&salt);
        raw.extend_from_slice(&nonce_prefix);
        push_u8_len(&mut raw, key_name.as_bytes());
        push_u8_len_count(&mut raw, context.len());
        // BTreeMap<String, _> iterates in byte order of the keys: the canonical order.
        for (k, v) in context {
            bounded("context key", k.len(), 1, MAX_CONTEXT_KEY_LEN)?;
            bounded("context value", v.len(), 0, MAX_CONTEXT_VALUE_LEN)?;
            push_u16_len(&mut raw, k.as_bytes());
            push_u16_len(&mut raw, v.as_bytes());
        }
        push_u16_len(&mut raw, wrapped_key);
        let total = u32::try_from(raw.len()).map_err(|_| E::Limit("header length"))?;
        raw[5..9].copy_from_slice(&total.to_be_bytes());
        Ok(Self {
            segment_size,
            salt,
            nonce_prefix,
            key_name: key_name.to_owned(),
            context: context.clone(),
            wrapped_key: wrapped_key.to_vec(),
            raw,
        })
    }

    /// Header length H from the first [`PREFIX_LEN`] bytes (magic and version checked).
    ///
    /// # Errors
    /// `BadMagic`, `UnsupportedVersion`, `Limit` for a header length out of bounds.
    pub fn length_from_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<usize, E> {
        if prefix[..4] != MAGIC {
            return Err(E::BadMagic);
        }
        if prefix[4] != VERSION {
            return Err(E::UnsupportedVersion(prefix[4]));
        }
        let total = u32::from_be_bytes([prefix[5], prefix[6], prefix[7], prefix[8]]) as usize;
        bounded("header length", total, MIN_HEADER_LEN, MAX_HEADER_LEN)?;
        Ok(total)
    }

    /// Parses exactly one complete header.
    ///
    /// # Errors
    /// Any `FileFormatError` describing the first rule the bytes break.
    pub fn parse(raw: &[u8]) -> Result<Self, E> {
        let prefix: &[u8; PREFIX_LEN] = raw
            .get(..PREFIX_LEN)
            .and_then(|p| p.try_into().ok())
            .ok_or(E::Truncated("header"))?;
        let total = Self::length_from_prefix(prefix)?;
        if raw.len() != total {
            return Err(E::Truncated("header"));
        }
        let mut c = Cursor {
            data: raw,
            pos: PREFIX_LEN,
        };
        let segment_size = u32::from_be_bytes(c.array("segment size")?);
        check_segment_size(segment_size)?;
        let salt = c.array("salt")?;
        let nonce_prefix = c.array("nonce prefix")?;
        let n = usize::from(c.array::<1>("key name length")?[0]);
        bounded("key name", n, 1, MAX_KEY_NAME_LEN)?;
        let key_name = c.utf8(n, "key name")?;
        let count = usize::from(c.array::<1>("context count")?[0]);
        bounded("context pairs", count, 0, MAX_CONTEXT_PAIRS)?;
        let mut context = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..count {
            let klen = c.u16("context key length")?;
            bounded("context key", klen, 1, MAX_CONTEXT_KEY_LEN)?;
            let k = c.utf8(klen, "context key")?;
            if last.as_ref().is_some_and(|l| k.as_bytes() <= l.as_bytes()) {
                return Err(E::ContextOrder);
            }
            let vlen = c.u16("context value length")?;
            bounded("context value", vlen, 0, MAX_CONTEXT_VALUE_LEN)?;
            let v = c.utf8(vlen, "context value")?;
            last = Some(k.clone());
            context.insert(k, v);
        }
        let w = c.u16("wrapped key length")?;
        bounded("wrapped key", w, 1, MAX_WRAPPED_KEY_LEN)?;
        let wrapped_key = c.take(w, "wrapped key")?.to_vec();
        if c.pos != total {
            return Err(E::TrailingHeaderBytes);
        }
        Ok(Self {
            segment_size,
            salt,
            nonce_prefix,
            key_name,
            context,
            wrapped_key,
            raw: raw.to_vec(),
        })
    }

    /// The exact header bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// Plaintext bytes of every segment but the last: S − 16.
    pub fn plaintext_segment_size(&self) -> usize {
        self.segment_size as usize - TAG_LEN
    }
}

fn check_segment_size(s: u32) -> Result<(), E> {
    bounded(
        "segment size",
        s as usize,
        MIN_SEGMENT_SIZE as usize,
        MAX_SEGMENT_SIZE as usize,
    )
}

fn bounded(what: &'static str, v: usize, min: usize, max: usize) -> Result<(), E> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(E::Limit(what))
    }
}

// Lengths are bounded before these are called, so the narrowing casts cannot truncate.
fn push_u8_len(out: &mut Vec<u8>, b: &[u8]) {
    push_u8_len_count(out, b.len());
    out.extend_from_slice(b);
}

fn push_u8_len_count(out: &mut Vec<u8>, n: usize) {
    out.push(u8::try_from(n).unwrap_or(u8::MAX));
}

fn push_u16_len(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u16::try_from(b.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], E> {
        let out = self
            .data
            .get(self.pos..self.pos + n)
            .ok_or(E::Truncated(what))?;
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], E> {
        self.take(N, what)?
            .try_into()
            .map_err(|_| E::Truncated(what))
    }

    fn u16(&mut self, what: &'static str) -> Result<usize, E> {
        Ok(usize::from(u16::from_be_bytes(self.array(what)?)))
    }

    fn utf8(&mut self, n: usize, what: &'static str) -> Result<String, E> {
        String::from_utf8(self.take(n, what)?.to_vec()).map_err(|_| E::NotUtf8(what))
    }
}
