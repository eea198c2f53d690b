//! Key names: the caller-facing identifier of a key-encryption key, and its HSM object label.

use std::fmt;

use super::KeyInputError;

/// Longest key name, in bytes.
pub const MAX_KEY_NAME_LEN: usize = 128;

/// A validated key name: `[a-z0-9][a-z0-9._/-]{0,127}`, no `//`, no `..` segment, no trailing
/// `/`. Examples: `datasets/imagenet-eu`, `seal/openbao-prod`.
///
/// Holding a `KeyName` proves the rules were checked, so later code (labels, envelopes, SQL)
/// does not check again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName(String);

impl KeyName {
    /// Validates `s` as a key name.
    ///
    /// # Errors
    /// A `KeyInputError::Name*` variant naming the first broken rule.
    pub fn parse(s: &str) -> Result<Self, KeyInputError> {
        let bytes = s.as_bytes();
        let first = *bytes.first().ok_or(KeyInputError::NameEmpty)?;
        if bytes.len() > MAX_KEY_NAME_LEN {
            return Err(KeyInputError::NameTooLong { len: bytes.len() });
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(KeyInputError::NameBadStart);
        }
        let allowed = |b: u8| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'/' | b'-')
        };
        if let Some(position) = bytes.iter().position(|&b| !allowed(b)) {
            return Err(KeyInputError::NameBadChar { position });
        }
        if s.ends_with('/') {
            return Err(KeyInputError::NameTrailingSlash);
        }
        if s.contains("//") {
            return Err(KeyInputError::NameEmptySegment);
        }
        if s.split('/').any(|seg| seg == "..") {
            return Err(KeyInputError::NameDotDotSegment);
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The PKCS#11 `CKA_LABEL` of version `version` of this key: `kb:<name>:v<n>`.
    #[must_use]
    pub fn hsm_label(&self, version: u32) -> String {
        format!("kb:{}:v{version}", self.0)
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for KeyName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_parse() {
        for ok in [
            "a",
            "0",
            "datasets/imagenet-eu",
            "models/llm-7b/checkpoints",
            "seal/openbao-prod",
            "a.b_c-d/e",
            "a/.hidden",
            "a/..b",
        ] {
            assert_eq!(KeyName::parse(ok).unwrap().as_str(), ok);
        }
        assert!(KeyName::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn invalid_names_say_which_rule() {
        use KeyInputError as E;
        let cases: &[(&str, E)] = &[
            ("", E::NameEmpty),
            ("Datasets", E::NameBadStart),
            ("-a", E::NameBadStart),
            (".a", E::NameBadStart),
            ("/a", E::NameBadStart),
            ("a b", E::NameBadChar { position: 1 }),
            ("aé", E::NameBadChar { position: 1 }),
            ("a:b", E::NameBadChar { position: 1 }),
            ("aB", E::NameBadChar { position: 1 }),
            ("a//b", E::NameEmptySegment),
            ("a/../b", E::NameDotDotSegment),
            ("a/..", E::NameDotDotSegment),
            ("a/", E::NameTrailingSlash),
        ];
        for (input, want) in cases {
            assert_eq!(KeyName::parse(input).unwrap_err(), *want, "{input:?}");
        }
        assert_eq!(
            KeyName::parse(&"a".repeat(129)).unwrap_err(),
            E::NameTooLong { len: 129 }
        );
    }

    #[test]
    fn hsm_label_is_kb_name_version() {
        let name = KeyName::parse("datasets/demo").unwrap();
        assert_eq!(name.hsm_label(3), "kb:datasets/demo:v3");
        assert_eq!(name.to_string(), "datasets/demo");
    }
}
