//! Log lines in hclog's JSON shape (`@level`, `@message`, then the fields), the one format
//! go-plugin re-logs at the line's own level with its fields; any other stderr line shows up
//! in bao's log only at debug level.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// go-plugin parses `@timestamp` with Go's `2006-01-02T15:04:05.000000Z07:00` and drops a
/// line whose timestamp does not parse.
const TIMESTAMP: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

/// Formats each event as one hclog JSON line.
#[derive(Debug, Default, Clone, Copy)]
pub struct HclogJson;

impl<S, N> FormatEvent<S, N> for HclogJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        writeln!(writer, "{}", line(event))
    }
}

fn line(event: &Event<'_>) -> Value {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let mut out = Map::new();
    out.insert("@level".into(), level(*event.metadata().level()).into());
    let message = fields.0.remove("message").unwrap_or_else(|| "".into());
    out.insert("@message".into(), message);
    if let Ok(now) = time::OffsetDateTime::now_utc().format(TIMESTAMP) {
        out.insert("@timestamp".into(), now.into());
    }
    out.extend(fields.0);
    Value::Object(out)
}

fn level(l: Level) -> &'static str {
    match l {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

#[derive(Default)]
struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn events_become_hclog_json_lines() -> Result<(), Box<dyn std::error::Error>> {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .event_format(HclogJson)
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(version = 3, key = "seal/x", "rotated");
        });
        let text = String::from_utf8(buf.0.lock().map_err(|_| "poisoned")?.clone())?;
        let v: Value = serde_json::from_str(text.trim_end())?;
        assert_eq!(v["@level"], "warn");
        assert_eq!(v["@message"], "rotated");
        assert_eq!(v["version"], 3);
        assert_eq!(v["key"], "seal/x");
        let ts = v["@timestamp"].as_str().unwrap_or_default();
        assert_eq!(ts.len(), "2026-01-02T03:04:05.123456Z".len(), "{ts}");
        assert!(ts.ends_with('Z'));
        Ok(())
    }
}
