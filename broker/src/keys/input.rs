//! Errors of caller-given key names and encryption contexts.
//!
//! Its own file, with no dependency but `thiserror`, so the fuzz targets can compile the pure
//! parsers (`name`, `context`, `envelope`) without the rest of the broker.

/// A key name or an encryption context given by a caller breaks a rule.
///
/// Messages say which rule; they echo at most a short, already-validated context key,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyInputError {
    /// The key name is empty.
    #[error("key name is empty")]
    NameEmpty,
    /// The key name is longer than 128 bytes.
    #[error("key name is {len} bytes; at most 128 are allowed")]
    NameTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The first character is not `[a-z0-9]`.
    #[error("key name must start with a lower-case letter or a digit")]
    NameBadStart,
    /// A character outside `[a-z0-9._/-]`.
    #[error("key name has a character outside [a-z0-9._/-] at byte {position}")]
    NameBadChar {
        /// Byte offset of the first bad character.
        position: usize,
    },
    /// The name contains `//` (an empty segment).
    #[error("key name must not contain an empty segment (//)")]
    NameEmptySegment,
    /// A `..` segment.
    #[error("key name must not contain a '..' segment")]
    NameDotDotSegment,
    /// The name ends with `/`.
    #[error("key name must not end with '/'")]
    NameTrailingSlash,
    /// More pairs than the context allows.
    #[error("encryption context has {count} pairs; at most 16 are allowed")]
    ContextTooManyPairs {
        /// How many were given.
        count: usize,
    },
    /// A context key is empty or longer than 256 bytes.
    #[error("encryption context key is {len} bytes; 1 to 256 are allowed")]
    ContextKeyLength {
        /// Its length in bytes.
        len: usize,
    },
    /// A context key has a character outside `[A-Za-z0-9._:/-]`.
    #[error("encryption context key has a character outside [A-Za-z0-9._:/-] at byte {position}")]
    ContextKeyBadChar {
        /// Byte offset of the first bad character.
        position: usize,
    },
    /// A context value is longer than 256 bytes.
    #[error("encryption context value for {key:?} is {len} bytes; at most 256 are allowed")]
    ContextValueTooLong {
        /// The (valid) key of the pair.
        key: String,
        /// The value's length in bytes.
        len: usize,
    },
    /// A context value contains a control character.
    #[error("encryption context value for {key:?} contains a control character")]
    ContextValueControlChar {
        /// The (valid) key of the pair.
        key: String,
    },
}
