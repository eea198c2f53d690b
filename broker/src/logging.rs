//! The operator log: `tracing` events to stderr, as text or one JSON object per line, filtered
//! by `[log] level` — or by `KEYBROKER_LOG` when set, which then wins over the file, also on
//! reload. The filter sits behind a reload layer so SIGHUP can change levels while serving.
//!
//! Every event of a gRPC request carries the request's span (`request{request_id=…}`; in JSON
//! the first entry of `spans`), so each line can be tied to the audit record of that request.

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
    EnvFilter::builder()
        .parse(value)
        .map_err(|e| LogError::Filter {
            source_name,
            value: value.to_owned(),
            message: e.to_string(),
        })
}

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
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
