//! Parsing of `[log]` (types in `config/log.rs`).

use serde::Deserialize;

use super::Ctx;
use crate::config::{ConfigError, LogConfig, LogFormat};

/// Longest accepted `log.level` (a filter is a handful of directives).
const MAX_LEVEL_LEN: usize = 1024;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

pub(super) fn log(cx: &Ctx<'_>, raw: RawLog) -> Result<LogConfig, ConfigError> {
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(cx.invalid(
                "log.format",
                format!("{other:?} is not a log format; use \"text\" or \"json\""),
            ));
        }
    };
    let level = raw.level.unwrap_or_else(|| LogConfig::default().level);
    if level.len() > MAX_LEVEL_LEN {
        return Err(cx.invalid("log.level", format!("longer than {MAX_LEVEL_LEN} bytes")));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(&level)
        .map_err(|e| {
            cx.invalid(
                "log.level",
                format!("{level:?} is not a filter ({e}); write e.g. \"info\" or \"info,keybroker_broker::hsm=debug\""),
            )
        })?;
    Ok(LogConfig { format, level })
}
