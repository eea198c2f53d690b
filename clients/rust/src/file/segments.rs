//! Segment crypto of KBEF v1: the file key `HKDF-SHA256(data key, salt, header)`, nonces
//! `prefix ‖ BE32(i) ‖ last`, and the two streaming loops. Each loop holds one segment plus one
//! byte of look-ahead (to know whether a segment is the last), so memory is bounded by the
//! segment size. A segment's plaintext is written only after its tag verified.

use std::io::{ErrorKind, Read, Write};
use std::time::Instant;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use zeroize::Zeroizing;

use super::FileFormatError as E;
use super::header::{DATA_KEY_LEN, Header, PREFIX_LEN, TAG_LEN};

const MAX_SEGMENTS: u64 = 1 << 32;

/// Derives the per-file AES-256-GCM key. ring keeps the expanded key schedule inside
/// `LessSafeKey`; it lives no longer than the one file operation.
fn file_key(data_key: &[u8], header: &Header) -> Result<LessSafeKey, E> {
    if data_key.len() != DATA_KEY_LEN {
        return Err(E::KeyLength);
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &header.salt).extract(data_key);
    let info = [header.as_bytes()];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| E::Limit("hkdf output"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn nonce(header: &Header, index: u64, last: bool) -> Result<Nonce, E> {
    let index = u32::try_from(index).map_err(|_| E::TooManySegments)?;
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(&header.nonce_prefix);
    n[7..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Ok(Nonce::assume_unique_for_key(n))
}

/// Reads into `buf` until it is full or the input ends; returns the bytes read.
fn fill(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize, E> {
    let mut have = 0;
    while have < buf.len() {
        match input.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(have)
}

/// Encrypts `input` to `output` as a KBEF file with `header` and the plaintext `data_key`.
/// `progress` is called with the plaintext bytes done after each segment. Returns the
/// plaintext length.
///
/// # Errors
/// `KeyLength`, `TooManySegments`, `Io`.
pub fn encrypt_stream(
    input: &mut dyn Read,
    output: &mut dyn Write,
    header: &Header,
    data_key: &[u8],
    progress: &mut dyn FnMut(u64),
) -> Result<u64, E> {
    let key = file_key(data_key, header)?;
    output.write_all(header.as_bytes())?;
    let p = header.plaintext_segment_size();
    let mut buf = Zeroizing::new(vec![0u8; p + 1]);
    let mut have = fill(input, &mut buf)?;
    let (mut index, mut done) = (0u64, 0u64);
    loop {
        let last = have <= p;
        let n = have.min(p);
        let tag = key
            .seal_in_place_separate_tag(nonce(header, index, last)?, Aad::empty(), &mut buf[..n])
            .map_err(|_| E::TooManySegments)?;
        output.write_all(&buf[..n])?;
        output.write_all(tag.as_ref())?;
        done += n as u64;
        progress(done);
        if last {
            break;
        }
        buf[0] = buf[p];
        have = 1 + fill(input, &mut buf[1..])?;
        index += 1;
        if index >= MAX_SEGMENTS {
            return Err(E::TooManySegments);
        }
    }
    output.flush()?;
    Ok(done)
}

/// Reads and parses the header at the start of `input`, leaving `input` at the first segment.
///
/// # Errors
/// `Truncated`, and the header's own errors.
pub fn read_header(input: &mut dyn Read) -> Result<Header, E> {
    let mut prefix = [0u8; PREFIX_LEN];
    if fill(input, &mut prefix)? != PREFIX_LEN {
        return Err(E::Truncated("header"));
    }
    let total = Header::length_from_prefix(&prefix)?;
    let mut raw = vec![0u8; total];
    raw[..PREFIX_LEN].copy_from_slice(&prefix);
    if fill(input, &mut raw[PREFIX_LEN..])? != total - PREFIX_LEN {
        return Err(E::Truncated("header"));
    }
    Header::parse(&raw)
}

/// Decrypts the segments of one KBEF file whose header was read with [`read_header`].
pub struct Decryptor {
    header: Header,
    key: LessSafeKey,
    lease_end: Option<Instant>,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decryptor")
            .field("key_name", &self.header.key_name)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Decryptor {
    /// Derives the file key from the plaintext data key. `lease_end`, when set, stops the
    /// decryption (with `LeaseExpired`) once that instant has passed.
    ///
    /// # Errors
    /// `KeyLength`.
    pub fn new(header: Header, data_key: &[u8], lease_end: Option<Instant>) -> Result<Self, E> {
        let key = file_key(data_key, &header)?;
        Ok(Self {
            header,
            key,
            lease_end,
        })
    }

    /// Streams the segments from `input` (positioned after the header) to `output`. Returns
    /// the plaintext length.
    ///
    /// # Errors
    /// `Integrity(i)` at the first segment that fails (nothing of it is written), `Trailing`,
    /// `LeaseExpired`, `Io`.
    pub fn decrypt_stream(
        &self,
        input: &mut dyn Read,
        output: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, E> {
        let s = self.header.segment_size as usize;
        let mut buf = Zeroizing::new(vec![0u8; s + 1]);
        let mut have = fill(input, &mut buf)?;
        let (mut index, mut done) = (0u64, 0u64);
        loop {
            if self.lease_end.is_some_and(|t| Instant::now() >= t) {
                return Err(E::LeaseExpired);
            }
            let last = have <= s;
            let n = have.min(s);
            if n < TAG_LEN {
                return Err(E::Integrity(index));
            }
            if last && index > 0 && n == TAG_LEN {
                return Err(E::Trailing);
            }
            let plain = self
                .key
                .open_in_place(
                    nonce(&self.header, index, last)?,
                    Aad::empty(),
                    &mut buf[..n],
                )
                .map_err(|_| E::Integrity(index))?;
            output.write_all(plain)?;
            done += plain.len() as u64;
            progress(done);
            if last {
                break;
            }
            buf[0] = buf[s];
            have = 1 + fill(input, &mut buf[1..])?;
            index += 1;
        }
        output.flush()?;
        Ok(done)
    }

    /// The header this decryptor was made for.
    pub fn header(&self) -> &Header {
        &self.header
    }
}
