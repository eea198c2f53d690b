//! Encryption context: the caller's string map bound into the AAD of every wrap.
//!
//! The context is logged in clear in the audit record, so it must never hold secrets. Its
//! canonical encoding is part of the ciphertext format (docs/ciphertext-format.md): change it and
//! every existing ciphertext stops decrypting.

use std::collections::{BTreeMap, HashMap};

use super::KeyInputError;

/// Most pairs in one context.
pub const MAX_CONTEXT_PAIRS: usize = 16;
/// Longest context key, in bytes.
pub const MAX_CONTEXT_KEY_LEN: usize = 256;
/// Longest context value, in bytes.
pub const MAX_CONTEXT_VALUE_LEN: usize = 256;

/// A validated encryption context, ordered by key bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// The empty context.
    #[must_use]
    pub fn empty() -> Self {
        Self::default()
    }

    /// Validates a caller's map: at most 16 pairs; keys 1..=256 bytes of `[A-Za-z0-9._:/-]`;
    /// values at most 256 bytes without control characters.
    ///
    /// # Errors
    /// A `KeyInputError::Context*` variant for the first broken limit (keys checked in sorted
    /// order, so the error does not depend on hash order).
    pub fn from_map(map: HashMap<String, String>) -> Result<Self, KeyInputError> {
        if map.len() > MAX_CONTEXT_PAIRS {
            return Err(KeyInputError::ContextTooManyPairs { count: map.len() });
        }
        let sorted: BTreeMap<String, String> = map.into_iter().collect();
        for (key, value) in &sorted {
            check_key(key)?;
            if value.len() > MAX_CONTEXT_VALUE_LEN {
                return Err(KeyInputError::ContextValueTooLong {
                    key: key.clone(),
                    len: value.len(),
                });
            }
            if value.chars().any(char::is_control) {
                return Err(KeyInputError::ContextValueControlChar { key: key.clone() });
            }
        }
        Ok(Self(sorted))
    }

    /// The value for `key`, if present.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Pairs in canonical (key byte) order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of pairs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no pairs.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Deterministic encoding: `u8` pair count, then per pair in key-byte order
    /// `u16 BE len ‖ key ‖ u16 BE len ‖ value`. Injective, so two different contexts never
    /// produce the same AAD.
    #[must_use]
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let size = 1 + self
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        // The limits (checked in from_map, the only constructor) keep these casts lossless.
        out.push(u8::try_from(self.0.len()).unwrap_or(u8::MAX));
        for (k, v) in self.iter() {
            for part in [k, v] {
                let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(part.as_bytes());
            }
        }
        out
    }
}

fn check_key(key: &str) -> Result<(), KeyInputError> {
    if key.is_empty() || key.len() > MAX_CONTEXT_KEY_LEN {
        return Err(KeyInputError::ContextKeyLength { len: key.len() });
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-');
    match key.bytes().position(|b| !allowed(b)) {
        Some(position) => Err(KeyInputError::ContextKeyBadChar { position }),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ctx(pairs: &[(&str, &str)]) -> Result<EncryptionContext, KeyInputError> {
        EncryptionContext::from_map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn canonical_bytes_are_sorted_and_length_prefixed() {
        let c = ctx(&[("snapshot", "2024-06"), ("dataset", "imagenet")]).unwrap();
        let mut want = vec![2u8];
        want.extend_from_slice(b"\x00\x07dataset\x00\x08imagenet");
        want.extend_from_slice(b"\x00\x08snapshot\x00\x072024-06");
        assert_eq!(c.canonical_bytes(), want);
        assert_eq!(EncryptionContext::empty().canonical_bytes(), vec![0u8]);
    }

    #[test]
    fn sixteen_pairs_pass_seventeen_fail() {
        let mut m: HashMap<String, String> =
            (0..16).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(EncryptionContext::from_map(m.clone()).unwrap().len(), 16);
        m.insert("k16".into(), "v".into());
        assert_eq!(
            EncryptionContext::from_map(m).unwrap_err(),
            KeyInputError::ContextTooManyPairs { count: 17 }
        );
    }

    #[test]
    fn key_limits_are_enforced() {
        assert_eq!(
            ctx(&[("", "v")]).unwrap_err(),
            KeyInputError::ContextKeyLength { len: 0 }
        );
        let long = "k".repeat(257);
        assert_eq!(
            ctx(&[(&long, "v")]).unwrap_err(),
            KeyInputError::ContextKeyLength { len: 257 }
        );
        assert!(ctx(&[(&"k".repeat(256), "v")]).is_ok());
        assert_eq!(
            ctx(&[("job id", "v")]).unwrap_err(),
            KeyInputError::ContextKeyBadChar { position: 3 }
        );
        assert!(ctx(&[("k8s.io/namespace:x_y-Z0", "v")]).is_ok());
    }

    #[test]
    fn value_limits_are_enforced_without_echoing_the_value() {
        let long = "v".repeat(257);
        let e = ctx(&[("run", &long)]).unwrap_err();
        assert_eq!(
            e,
            KeyInputError::ContextValueTooLong {
                key: "run".into(),
                len: 257
            }
        );
        assert!(!e.to_string().contains("vvv"));
        assert!(ctx(&[("run", &"v".repeat(256))]).is_ok());
        assert!(ctx(&[("run", "")]).is_ok());
        for bad in ["a\nb", "a\u{0}", "\u{7f}", "x\u{85}"] {
            assert_eq!(
                ctx(&[("run", bad)]).unwrap_err(),
                KeyInputError::ContextValueControlChar { key: "run".into() }
            );
        }
        assert!(ctx(&[("run", "café ☕")]).is_ok());
    }

    proptest! {
        #[test]
        fn canonical_bytes_are_injective(
            a in prop::collection::hash_map("[a-z:]{1,4}", "[a-z ]{0,4}", 0..4),
            b in prop::collection::hash_map("[a-z:]{1,4}", "[a-z ]{0,4}", 0..4),
        ) {
            let (ca, cb) = (EncryptionContext::from_map(a).unwrap(), EncryptionContext::from_map(b).unwrap());
            prop_assert_eq!(ca == cb, ca.canonical_bytes() == cb.canonical_bytes());
        }
    }
}
