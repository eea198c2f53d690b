//! The bench report: operations per second, latency percentiles (milliseconds, from the HDR
//! histograms), errors by code, per operation for mixes. The JSON field names are a stable
//! interface for scripts comparing runs (`ops_per_sec`, `latency_ms.{p50,p90,p99,p999,max}`,
//! `errors`).

use std::collections::BTreeMap;
use std::io::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::measure::{OpKind, Outcome};
use crate::output::{Format, write_json};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct LatencyMs {
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

impl LatencyMs {
    fn of(h: &Histogram<u64>) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Figures of one operation kind in a mix.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OpFigures {
    pub(crate) ok: u64,
    pub(crate) ops_per_sec: f64,
    pub(crate) latency_ms: LatencyMs,
}

/// What the run was.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunShape {
    /// `broker`, `raw-hsm` or `openbao-transit`.
    pub(crate) target: &'static str,
    /// `datakey`, `decrypt`, `encrypt` or `mixed`.
    pub(crate) op: String,
    /// Weights of a mixed run.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) mix: BTreeMap<String, u32>,
    pub(crate) concurrency: usize,
    pub(crate) connections: usize,
    /// Open-loop rate, when set.
    pub(crate) rate: Option<f64>,
    /// Warmup length in seconds (not counted).
    pub(crate) warmup_s: f64,
}

/// The report printed at the end.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    #[serde(flatten)]
    pub(crate) shape: RunShape,
    pub(crate) duration_s: f64,
    /// Successful operations.
    pub(crate) ok: u64,
    /// Successful operations per second (errors excluded).
    pub(crate) ops_per_sec: f64,
    /// Latency of successful operations (open loop: from the intended send time).
    pub(crate) latency_ms: LatencyMs,
    /// Failed operations by code (gRPC code name, `HTTP_<status>`, or `CKR_*`).
    pub(crate) errors: BTreeMap<String, u64>,
    /// Per operation kind.
    pub(crate) ops: BTreeMap<OpKind, OpFigures>,
}

impl Report {
    /// Builds the report of a measured run.
    pub(crate) fn new(shape: RunShape, outcome: &Outcome) -> Self {
        let secs = outcome.elapsed.as_secs_f64().max(1e-9);
        #[allow(clippy::cast_precision_loss)]
        let per_sec = |n: u64| n as f64 / secs;
        let mut all: Option<Histogram<u64>> = None;
        let mut ops = BTreeMap::new();
        for (op, h) in &outcome.latency {
            match &mut all {
                None => all = Some(h.clone()),
                Some(a) => {
                    if a.add(h).is_err() {
                        a.saturating_record_n(h.max(), h.len());
                    }
                }
            }
            ops.insert(
                *op,
                OpFigures {
                    ok: h.len(),
                    ops_per_sec: per_sec(h.len()),
                    latency_ms: LatencyMs::of(h),
                },
            );
        }
        let ok = all.as_ref().map_or(0, Histogram::len);
        Self {
            shape,
            duration_s: outcome.elapsed.as_secs_f64(),
            ok,
            ops_per_sec: per_sec(ok),
            latency_ms: all.as_ref().map(LatencyMs::of).unwrap_or_default(),
            errors: outcome.errors.clone(),
            ops,
        }
    }

    /// Prints the report as JSON or as a readable block.
    ///
    /// # Errors
    /// I/O errors of `out`.
    pub(crate) fn print(&self, format: Format, out: &mut dyn Write) -> std::io::Result<()> {
        match format {
            Format::Json => write_json(out, self),
            Format::Text => self.print_text(out),
        }
    }

    fn print_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let s = &self.shape;
        let rate = s
            .rate
            .map_or("closed loop".to_owned(), |r| format!("open loop at {r}/s"));
        writeln!(
            out,
            "{} {}: {} in flight over {} connection(s), {rate}",
            s.target, s.op, s.concurrency, s.connections
        )?;
        let errors: u64 = self.errors.values().sum();
        writeln!(
            out,
            "{} ok, {errors} errors in {:.2} s: {:.0} ops/s",
            self.ok, self.duration_s, self.ops_per_sec
        )?;
        let lat = |l: &LatencyMs| {
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms",
                l.p50, l.p90, l.p99, l.p999, l.max
            )
        };
        writeln!(out, "latency: {}", lat(&self.latency_ms))?;
        if self.ops.len() > 1 {
            for (op, f) in &self.ops {
                writeln!(
                    out,
                    "  {:8} {:>8.0} ops/s  {}",
                    op.name(),
                    f.ops_per_sec,
                    lat(&f.latency_ms)
                )?;
            }
        }
        for (code, n) in &self.errors {
            writeln!(out, "error {code}: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn shape() -> RunShape {
        RunShape {
            target: "broker",
            op: "datakey".into(),
            mix: BTreeMap::new(),
            concurrency: 4,
            connections: 1,
            rate: None,
            warmup_s: 0.0,
        }
    }

    #[test]
    fn report_json_has_the_script_interface() -> anyhow::Result<()> {
        let mut h = super::super::measure::histogram()?;
        for us in 1..=1000 {
            h.record(us)?;
        }
        let outcome = Outcome {
            latency: BTreeMap::from([(OpKind::Datakey, h)]),
            errors: BTreeMap::from([("UNAVAILABLE".to_owned(), 3)]),
            elapsed: Duration::from_secs(2),
        };
        let mut buf = Vec::new();
        Report::new(shape(), &outcome).print(Format::Json, &mut buf)?;
        let v: serde_json::Value = serde_json::from_slice(&buf)?;
        assert_eq!(v["ops_per_sec"], 500.0);
        assert_eq!(v["ok"], 1000);
        assert_eq!(v["errors"]["UNAVAILABLE"], 3);
        let p50 = v["latency_ms"]["p50"].as_f64().unwrap_or_default();
        assert!((0.49..=0.51).contains(&p50), "{p50}");
        let max = v["latency_ms"]["max"].as_f64().unwrap_or_default();
        assert!((0.99..=1.01).contains(&max), "{max}");
        for k in ["p90", "p99", "p999"] {
            assert!(v["latency_ms"][k].as_f64().is_some(), "{k}");
        }
        assert_eq!(v["ops"]["datakey"]["ok"], 1000);
        Ok(())
    }

    #[test]
    fn empty_run_reports_zeros_not_nan() -> anyhow::Result<()> {
        let outcome = Outcome {
            latency: BTreeMap::new(),
            errors: BTreeMap::new(),
            elapsed: Duration::ZERO,
        };
        let r = Report::new(shape(), &outcome);
        assert_eq!(r.ops_per_sec, 0.0);
        assert_eq!(r.latency_ms, LatencyMs::default());
        let mut buf = Vec::new();
        r.print(Format::Text, &mut buf)?;
        assert!(String::from_utf8(buf)?.contains("0 ok, 0 errors"));
        Ok(())
    }
}
