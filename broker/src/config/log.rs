//! `[log]`: output format and level directives of the operator log (not the audit log).
//! Types only; parsing is in `raw/log.rs`. `KEYBROKER_LOG` in the environment overrides
//! `level`; SIGHUP re-reads `level` from the file.

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// `tracing` filter directives: a default level and per-module levels, e.g.
    /// `info,keybroker_broker::hsm=debug`. Validated at load.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}
