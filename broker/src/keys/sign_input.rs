//! Caller input of the Signing service, checked before any key is touched: digests (algorithm,
//! exact length, strict hex), the artifact's name and media type, in-toto subjects, and the
//! in-toto Statement v1 that `SignDsse` signs. Pure.
//!
//! Every limit here also keeps the audit record of a signature well inside its 16 KiB cap:
//! at most [`MAX_SUBJECTS`] subjects of [`MAX_SUBJECT_NAME`] bytes and two digests each.

use std::collections::BTreeMap;

use serde_json::Value;

use super::KeyError;

/// Largest in-toto Statement `SignDsse` accepts.
pub const MAX_STATEMENT_BYTES: usize = 64 * 1024;
/// Most subjects in one request or statement.
pub const MAX_SUBJECTS: usize = 16;
/// Longest subject name, in bytes.
pub const MAX_SUBJECT_NAME: usize = 128;
/// Most digests per subject.
pub const MAX_SUBJECT_DIGESTS: usize = 2;
/// Longest artifact name, in bytes.
pub const MAX_ARTIFACT_NAME: usize = 256;
/// Longest media type, in bytes.
pub const MAX_MEDIA_TYPE: usize = 128;
/// Longest predicate type, in bytes.
pub const MAX_PREDICATE_TYPE: usize = 256;
/// The `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The DSSE `payloadType` of an in-toto statement.
pub const DSSE_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// Algorithm of a digest given to `Sign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// SHA-256 (32 bytes).
    Sha256,
    /// SHA-384 (48 bytes).
    Sha384,
}

impl DigestAlgorithm {
    /// Digest length in bytes.
    #[must_use]
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
        }
    }

    /// The in-toto DigestSet name: `sha256` or `sha384`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
        }
    }
}

/// A digest of the right length for its algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Its algorithm.
    pub algorithm: DigestAlgorithm,
    /// The digest bytes.
    pub bytes: Vec<u8>,
}

impl Digest {
    /// From raw bytes, or hex (upper or lower case), exactly one of them non-empty.
    ///
    /// # Errors
    /// [`KeyError::Invalid`] for both or neither given, a non-hex character or a wrong length.
    pub fn parse(algorithm: DigestAlgorithm, bytes: Vec<u8>, hex: &str) -> Result<Self, KeyError> {
        let bytes = match (bytes.is_empty(), hex.is_empty()) {
            (false, true) => bytes,
            (true, false) => {
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(KeyError::Invalid("digest_hex is not hex".into()));
                }
                if hex.len() != 2 * algorithm.digest_len() {
                    return Err(KeyError::Invalid(format!(
                        "a {} digest is {} hex digits, got {}",
                        algorithm.name(),
                        2 * algorithm.digest_len(),
                        hex.len()
                    )));
                }
                hex::decode(hex).map_err(|_| KeyError::Invalid("digest_hex is not hex".into()))?
            }
            _ => {
                return Err(KeyError::Invalid(
                    "give exactly one of digest and digest_hex".into(),
                ));
            }
        };
        if bytes.len() != algorithm.digest_len() {
            return Err(KeyError::Invalid(format!(
                "a {} digest is {} bytes, got {}",
                algorithm.name(),
                algorithm.digest_len(),
                bytes.len()
            )));
        }
        Ok(Self { algorithm, bytes })
    }

    /// `sha256:<lowercase hex>`.
    #[must_use]
    pub fn label(&self) -> String {
        format!("{}:{}", self.algorithm.name(), hex::encode(&self.bytes))
    }
}

/// One in-toto subject, validated: digests keyed by algorithm, values lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Its name.
    pub name: String,
    /// Algorithm → lowercase hex.
    pub digest: BTreeMap<String, String>,
}

impl Subject {
    /// `alg:hex` of every digest.
    pub fn digest_labels(&self) -> impl Iterator<Item = String> + '_ {
        self.digest.iter().map(|(a, h)| format!("{a}:{h}"))
    }
}

fn text(field: &str, value: &str, max: usize, allow_empty: bool) -> Result<(), KeyError> {
    if value.is_empty() && !allow_empty {
        return Err(KeyError::Invalid(format!("{field} is empty")));
    }
    if value.len() > max {
        return Err(KeyError::Invalid(format!(
            "{field} is {} bytes; at most {max} are allowed",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(KeyError::Invalid(format!(
            "{field} has a control character"
        )));
    }
    Ok(())
}

/// Expected hex length of a digest algorithm in-toto names, if we know it.
fn known_hex_len(alg: &str) -> Option<usize> {
    match alg {
        "sha256" | "sha512_256" => Some(64),
        "sha384" => Some(96),
        "sha512" => Some(128),
        _ => None,
    }
}

/// Validates one subject. Digest algorithms are `[a-z0-9_-]{1,16}`; values lowercase hex of
/// the algorithm's length (known ones) or an even length of at most 128 digits.
///
/// # Errors
/// [`KeyError::Invalid`] naming the rule.
pub fn subject(name: &str, digest: BTreeMap<String, String>) -> Result<Subject, KeyError> {
    text("subject name", name, MAX_SUBJECT_NAME, false)?;
    if digest.is_empty() || digest.len() > MAX_SUBJECT_DIGESTS {
        return Err(KeyError::Invalid(format!(
            "a subject has 1 to {MAX_SUBJECT_DIGESTS} digests"
        )));
    }
    for (alg, value) in &digest {
        let alg_ok = !alg.is_empty()
            && alg.len() <= 16
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !alg_ok {
            return Err(KeyError::Invalid(
                "subject digest algorithm must be [a-z0-9_-]{1,16}".into(),
            ));
        }
        let hex_ok = value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let len_ok = match known_hex_len(alg) {
            Some(n) => value.len() == n,
            None => !value.is_empty() && value.len() <= 128 && value.len() % 2 == 0,
        };
        if !hex_ok || !len_ok {
            return Err(KeyError::Invalid(format!(
                "subject digest {alg} must be lowercase hex of the algorithm's length"
            )));
        }
    }
    Ok(Subject {
        name: name.to_owned(),
        digest,
    })
}

/// Validates the artifact name (required) and media type (optional) of a `Sign` request.
///
/// # Errors
/// [`KeyError::Invalid`] naming the rule.
pub fn artifact(name: &str, media_type: &str) -> Result<(), KeyError> {
    text("artifact_name", name, MAX_ARTIFACT_NAME, false)?;
    text("media_type", media_type, MAX_MEDIA_TYPE, true)
}

/// Checks the number of subjects.
///
/// # Errors
/// [`KeyError::Invalid`] above [`MAX_SUBJECTS`].
pub fn subject_count(n: usize) -> Result<(), KeyError> {
    if n > MAX_SUBJECTS {
        return Err(KeyError::Invalid(format!(
            "{n} subjects; at most {MAX_SUBJECTS} are allowed"
        )));
    }
    Ok(())
}

/// What policy and the audit record learn of a valid in-toto Statement v1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Its subjects (at least one).
    pub subjects: Vec<Subject>,
    /// Its `predicateType`.
    pub predicate_type: String,
}

fn predicate_type(value: &str) -> Result<(), KeyError> {
    text("predicateType", value, MAX_PREDICATE_TYPE, false)?;
    let scheme = value.split_once(':').map(|(s, _)| s).unwrap_or_default();
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b));
    if !scheme_ok || value.contains(char::is_whitespace) {
        return Err(KeyError::Invalid(
            "predicateType must be a URI (scheme:…, no spaces)".into(),
        ));
    }
    Ok(())
}

/// Parses an in-toto Statement v1 (JSON object, no duplicate keys, at most
/// [`MAX_STATEMENT_BYTES`]): `_type`, `subject` (1..=[`MAX_SUBJECTS`] of `{name, digest}`),
/// `predicateType` (a URI), and optionally `predicate` (an object). Nothing else.
///
/// # Errors
/// [`KeyError::Invalid`] naming the first rule broken.
pub fn statement(bytes: &[u8]) -> Result<Statement, KeyError> {
    let bad = |why: &str| KeyError::Invalid(format!("in-toto statement: {why}"));
    if bytes.len() > MAX_STATEMENT_BYTES {
        return Err(bad(&format!(
            "{} bytes; at most {MAX_STATEMENT_BYTES} are allowed",
            bytes.len()
        )));
    }
    let map = crate::identity::strict_json::parse_object(bytes)
        .map_err(|_| bad("not one JSON object without duplicate keys"))?;
    if let Some(k) = map
        .keys()
        .find(|k| !["_type", "subject", "predicateType", "predicate"].contains(&k.as_str()))
    {
        return Err(bad(&format!(
            "unknown field {:?}",
            k.chars().take(32).collect::<String>()
        )));
    }
    if map.get("_type").and_then(Value::as_str) != Some(STATEMENT_TYPE) {
        return Err(bad(&format!("_type must be {STATEMENT_TYPE}")));
    }
    let pt = map
        .get("predicateType")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("predicateType is missing"))?;
    predicate_type(pt)?;
    if map.get("predicate").is_some_and(|p| !p.is_object()) {
        return Err(bad("predicate must be an object"));
    }
    let list = map
        .get("subject")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| bad("subject must be a non-empty list"))?;
    subject_count(list.len())?;
    let mut subjects = Vec::with_capacity(list.len());
    for s in list {
        let obj = s
            .as_object()
            .ok_or_else(|| bad("a subject is not an object"))?;
        if obj.keys().any(|k| k != "name" && k != "digest") {
            return Err(bad("a subject has a field other than name and digest"));
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("a subject has no name"))?;
        let digest = obj
            .get("digest")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("a subject has no digest"))?
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    v.as_str()
                        .ok_or_else(|| bad("a digest is not a string"))?
                        .to_owned(),
                ))
            })
            .collect::<Result<BTreeMap<_, _>, KeyError>>()?;
        subjects.push(subject(name, digest)?);
    }
    Ok(Statement {
        subjects,
        predicate_type: pt.to_owned(),
    })
}

#[cfg(test)]
#[path = "sign_input_tests.rs"]
mod tests;
