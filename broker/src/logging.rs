//! The operator log: `tracing` events to stderr, as text or one JSON object per line, filtered
//! by `[log] level` — or by `KEYBROKER_LOG` when set, which then wins over the file, also on
//! reload. The filter sits behind a reload layer so SIGHUP can change levels while serving.
//!
//! Every event of a gRPC request carries the request's span (`request{request_id=…}`; in JSON
//! the first entry of `spans`), so each line can be tied to the audit record of that request.
//!
//! Log fields can hold what a caller sent (a token's subject, a key name). The JSON format
//! escapes control characters itself; the text format goes through `Escaped`, so a raw
//! newline in such a value cannot split one event into a forged second line.

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::LogFormat;

/// The environment variable that overrides `[log] level`.
pub const ENV: &str = "KEYBROKER_LOG";

/// Why logging could not start or a new level was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `KEYBROKER_LOG` or `log.level` is not a valid filter.
    #[error("{source_name}: {value:?} is not a log filter: {message}")]
    Filter {
        /// `KEYBROKER_LOG` or `log.level`.
        source_name: &'static str,
        /// The rejected text.
        value: String,
        /// The parser's complaint.
        message: String,
    },
    /// A global subscriber was already installed, or the reload layer is gone.
    #[error("logging: {0}")]
    Install(String),
}

/// Changes the filter of the installed subscriber.
#[derive(Debug, Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    /// Set when `KEYBROKER_LOG` chose the filter: the file's level is then ignored.
    pinned_by_env: bool,
}

fn parse(source_name: &'static str, value: &str) -> Result<EnvFilter, LogError> {
    let filter = EnvFilter::builder()
        .parse(value)
        .map_err(|e| LogError::Filter {
            source_name,
            value: value.to_owned(),
            message: e.to_string(),
        })?;
    // AWS's SigV4 signer traces the request it signs (the XKS verifier re-signs every XKS
    // request, whose body holds plaintext): never, whatever level an operator asks for.
    Ok(filter.add_directive(QUIET_SIGNER.parse().map_err(
        |e: tracing_subscriber::filter::ParseError| LogError::Filter {
            source_name,
            value: QUIET_SIGNER.to_owned(),
            message: e.to_string(),
        },
    )?))
}

/// The directive that keeps the SigV4 signer quiet.
const QUIET_SIGNER: &str = "aws_sigv4=warn";

/// Installs the global subscriber: `format` to stderr, the filter from `KEYBROKER_LOG` if set,
/// else `level` (from `[log] level`).
///
/// # Errors
/// An invalid filter, or a subscriber already installed.
pub fn init(format: LogFormat, level: &str) -> Result<LogHandle, LogError> {
    let env = std::env::var(ENV).ok().filter(|v| !v.trim().is_empty());
    let filter = match &env {
        Some(v) => parse(ENV, v)?,
        None => parse("log.level", level)?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    let text = (format == LogFormat::Text).then(|| {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt::layer()
            .with_writer(Escaped { ansi })
            .with_ansi(ansi)
            .with_target(true)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .map_err(|e| LogError::Install(e.to_string()))?;
    Ok(LogHandle {
        filter: handle,
        pinned_by_env: env.is_some(),
    })
}

/// stderr for the text format: each event (formatted whole, then written once) has every
/// control character escaped (`\n`, `\r`, `\t`, `\x1f`, …) except the newline that ends
/// it — and the escape character when the formatter colours a terminal (a caller's own escape
/// characters are already defused by `tracing-subscriber`).
#[derive(Debug, Clone, Copy)]
struct Escaped {
    ansi: bool,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Escaped {
    type Writer = EscapedEvent;

    fn make_writer(&'a self) -> Self::Writer {
        EscapedEvent {
            ansi: self.ansi,
            buf: Vec::new(),
        }
    }
}

/// One event's text, escaped and written to stderr when dropped.
struct EscapedEvent {
    ansi: bool,
    buf: Vec<u8>,
}

impl std::io::Write for EscapedEvent {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EscapedEvent {
    fn drop(&mut self) {
        let line = escape_event(&self.buf, self.ansi);
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), &line);
    }
}

/// `event` with its control characters escaped, but for a final newline (and ESC if `ansi`).
fn escape_event(event: &[u8], ansi: bool) -> Vec<u8> {
    let (body, end) = match event.split_last() {
        Some((b'\n', body)) => (body, &b"\n"[..]),
        _ => (event, &b""[..]),
    };
    let mut out = Vec::with_capacity(event.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x1b if ansi => out.push(b),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

impl LogHandle {
    /// Replaces the filter with `level` (the file's `[log] level`), unless `KEYBROKER_LOG`
    /// pinned it. Returns whether the filter changed; an invalid level keeps the old filter.
    ///
    /// # Errors
    /// `level` is not a valid filter, or the subscriber is gone.
    pub fn set_level(&self, level: &str) -> Result<bool, LogError> {
        if self.pinned_by_env {
            return Ok(false);
        }
        let filter = parse("log.level", level)?;
        let old = self
            .filter
            .with_current(ToString::to_string)
            .map_err(|e| LogError::Install(e.to_string()))?;
        let changed = old != filter.to_string();
        if changed {
            self.filter
                .reload(filter)
                .map_err(|e| LogError::Install(e.to_string()))?;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_inside_an_event_is_escaped_and_only_the_last_one_ends_the_line() {
        let event = b"INFO subject=a\nINFO FORGED-LOG-LINE\r\x07\tx\n";
        let out = escape_event(event, false);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "INFO subject=a\\nINFO FORGED-LOG-LINE\\r\\x07\\tx\n"
        );
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(
            escape_event(b"\x1b[1mINFO\x1b[0m\n", true),
            b"\x1b[1mINFO\x1b[0m\n"
        );
        assert_eq!(escape_event(b"\x1b[1m\n", false), b"\\x1b[1m\n");
        assert_eq!(
            escape_event("caf\u{e9}".as_bytes(), false),
            "caf\u{e9}".as_bytes()
        );
    }
}
