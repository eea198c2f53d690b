//! A JSON object parser that refuses duplicate keys at any depth.
//!
//! `serde_json::Value` keeps the last of two equal keys, so `{"sub":"a","sub":"b"}` would mean
//! different things to us and to another parser. JWT headers and payloads go through here
//! instead; the result is an ordinary `serde_json::Map` once it is known to be unambiguous.

use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrictError {
    /// Not JSON, not an object at the top, or trailing data.
    NotObject,
    /// The same key twice in one object.
    DuplicateKey,
}

/// Nesting deeper than this is refused (tokens are small and flat).
const MAX_DEPTH: usize = 16;

/// Parses `bytes` as one JSON object without duplicate keys.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, StrictError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = de
        .deserialize_any(StrictVisitor { depth: 0 })
        .map_err(|e| {
            if e.to_string().starts_with(DUPLICATE) {
                StrictError::DuplicateKey
            } else {
                StrictError::NotObject
            }
        })?;
    de.end().map_err(|_| StrictError::NotObject)?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(StrictError::NotObject),
    }
}

const DUPLICATE: &str = "duplicate key";

#[derive(Clone, Copy)]
struct StrictVisitor {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictVisitor {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl StrictVisitor {
    fn deeper<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom("nesting too deep"));
        }
        Ok(Self {
            depth: self.depth + 1,
        })
    }
}

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON without duplicate object keys")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // Non-finite floats cannot come from JSON text; map them to null defensively.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.deeper()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(inner)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.deeper()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let v = map.next_value_seed(inner)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert_eq!(
            parse_object(br#"{"a":1,"a":2}"#),
            Err(StrictError::DuplicateKey)
        );
        assert_eq!(
            parse_object(br#"{"k":{"n":"x","n":"y"}}"#),
            Err(StrictError::DuplicateKey)
        );
        assert_eq!(
            parse_object(br#"{"k":[{"n":1,"n":1}]}"#),
            Err(StrictError::DuplicateKey)
        );
        // Escapes that decode to the same key are still the same key.
        assert_eq!(
            parse_object(br#"{"sub":"a","s\u0075b":"b"}"#),
            Err(StrictError::DuplicateKey)
        );
    }

    #[test]
    fn non_objects_and_trailing_data_are_refused() {
        for bad in [&b"[]"[..], b"1", b"\"s\"", b"{} {}", b"{", b"", b"null"] {
            assert_eq!(parse_object(bad), Err(StrictError::NotObject), "{bad:?}");
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(parse_object(deep.as_bytes()), Err(StrictError::NotObject));
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json_on_objects_without_duplicates(
            m in proptest::collection::btree_map("[a-z.]{1,6}", any::<i64>(), 0..8)
        ) {
            let text = serde_json::to_string(&m).unwrap_or_default();
            let ours = parse_object(text.as_bytes());
            let theirs: Map<String, Value> = serde_json::from_str(&text).unwrap_or_default();
            prop_assert_eq!(ours, Ok(theirs));
        }
    }
}
