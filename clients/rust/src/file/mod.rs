//! KBEF v1, the encrypted file format shared with the Python client (docs/file-format.md):
//! the header codec ([`Header`]) and streaming encryption/decryption with one segment buffer,
//! so memory stays bounded whatever the file size. Pure: the data key comes from the caller;
//! `ring` does AES-256-GCM and HKDF-SHA256.

mod header;
mod segments;
#[cfg(test)]
mod tests;

pub use header::{
    DATA_KEY_LEN, DEFAULT_SEGMENT_SIZE, Header, MAGIC, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE,
    NONCE_PREFIX_LEN, PREFIX_LEN, SALT_LEN, TAG_LEN, VERSION,
};
pub use segments::{Decryptor, encrypt_stream, read_header};

/// What reading or writing a KBEF file can fail with. Never holds key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum FileFormatError {
    /// Not a KBEF file.
    #[error("not a KBEF file (bad magic)")]
    BadMagic,
    /// A future format version.
    #[error("unsupported KBEF version {0}")]
    UnsupportedVersion(u8),
    /// A header field outside its bounds.
    #[error("KBEF header: {0} out of bounds")]
    Limit(&'static str),
    /// The input ended inside the named field.
    #[error("KBEF file truncated in {0}")]
    Truncated(&'static str),
    /// A text field is not UTF-8.
    #[error("KBEF header: {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// Context keys not strictly ascending (not canonical).
    #[error("KBEF header: context keys not strictly ascending")]
    ContextOrder,
    /// Bytes after the last header field.
    #[error("KBEF header has trailing bytes")]
    TrailingHeaderBytes,
    /// A segment failed authentication; its plaintext was not released.
    #[error(
        "segment {0} failed authentication (tampered, truncated, reordered, from another \
         file, or wrong key/context)"
    )]
    Integrity(u64),
    /// Data after the final segment, or an empty final segment after a full one.
    #[error("data after the final segment")]
    Trailing,
    /// More than 2^32 segments.
    #[error("too many segments")]
    TooManySegments,
    /// The data key is not 32 bytes.
    #[error("data key must be 32 bytes")]
    KeyLength,
    /// The data key's lease ended before the file was finished.
    #[error("the data key's lease ended before the file was finished")]
    LeaseExpired,
    /// The random generator failed.
    #[error("system random generator failed")]
    Random,
    /// Reading or writing failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
