//! Output helpers shared by the commands: the `--output` format, base64 (standard alphabet,
//! zeroizing buffer for key material), RFC 3339 times, and pretty JSON written straight to the
//! writer so that no extra copy of key material is left in an intermediate string.

use std::io::Write;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

/// `--output` format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Pretty-printed JSON (for scripts and `jq`).
    #[default]
    Json,
    /// A readable block (for people).
    Text,
}

/// Standard base64 of `bytes`, in a buffer allocated once at its final size and zeroized on
/// drop (it may encode a data key).
pub(crate) fn b64(bytes: &[u8]) -> Zeroizing<String> {
    let cap = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    let mut out = Zeroizing::new(String::with_capacity(cap));
    STANDARD.encode_string(bytes, &mut out);
    out
}

/// Decodes standard base64 (surrounding whitespace ignored).
///
/// # Errors
/// The decode error for non-base64 input.
pub(crate) fn from_b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD.decode(s.trim())
}

/// RFC 3339 text of a time; `None` when absent (or, never in practice, unformattable).
pub(crate) fn rfc3339(t: Option<OffsetDateTime>) -> Option<String> {
    t.and_then(|t| t.format(&Rfc3339).ok())
}

/// Writes `value` as pretty JSON plus a newline.
///
/// # Errors
/// I/O errors of `out`.
pub(crate) fn write_json<T: Serialize>(out: &mut dyn Write, value: &T) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_rfc3339() {
        let s = b64(&[0, 1, 2, 250, 251, 252]);
        assert_eq!(s.as_str(), "AAEC+vv8");
        assert_eq!(
            from_b64(" AAEC+vv8\n").ok(),
            Some(vec![0, 1, 2, 250, 251, 252])
        );
        assert!(from_b64("not base64!").is_err());
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).ok();
        assert_eq!(rfc3339(t).as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(rfc3339(None), None);
    }
}
