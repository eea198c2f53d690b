//! The load loop shared by every bench target: `concurrency` workers take numbered tickets,
//! each ticket is one operation (picked from the mix), and its latency goes into the worker's
//! HDR histogram. Closed loop measures from the send; open loop (`--rate`) gives ticket `i` the
//! intended send time `start + i / rate` and measures from *that*, so a stalled server shows
//! up as latency instead of as fewer requests (no coordinated omission).

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::measure::{OpKind, Outcome, histogram};
use super::target::Target;

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stop {
    /// After this long (no new ticket starts after it).
    Duration(Duration),
    /// After this many operations.
    Requests(u64),
}

/// Weighted operation mix; `pick` spreads the operations evenly over the tickets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mix {
    /// (operation, weight), weights > 0.
    parts: Vec<(OpKind, u32)>,
    total: u64,
}

impl Mix {
    /// A mix of one operation.
    pub(crate) fn single(op: OpKind) -> Self {
        Self {
            parts: vec![(op, 1)],
            total: 1,
        }
    }

    /// Parses `datakey=70,decrypt=30` (weights need not sum to 100).
    ///
    /// # Errors
    /// A message for an unknown operation, a zero or bad weight, a repeated operation, or an
    /// empty mix.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut parts: Vec<(OpKind, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("expected OP=WEIGHT in --mix, got {part:?}"))?;
            let op = OpKind::from_name(name.trim()).ok_or_else(|| {
                format!(
                    "unknown operation {name:?} in --mix: use datakey, decrypt, encrypt or sign"
                )
            })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w| *w > 0 && *w <= 1_000_000)
                .ok_or_else(|| format!("weight of {name} must be 1..=1000000, got {weight:?}"))?;
            if parts.iter().any(|(o, _)| *o == op) {
                return Err(format!("{name} given twice in --mix"));
            }
            parts.push((op, weight));
        }
        if parts.is_empty() {
            return Err("empty --mix: e.g. datakey=70,decrypt=30".into());
        }
        let total = parts.iter().map(|(_, w)| u64::from(*w)).sum();
        Ok(Self { parts, total })
    }

    /// The operations in the mix.
    pub(crate) fn ops(&self) -> impl Iterator<Item = OpKind> + '_ {
        self.parts.iter().map(|(op, _)| *op)
    }

    /// Operation name → weight, for the report.
    pub(crate) fn weights(&self) -> BTreeMap<String, u32> {
        self.parts
            .iter()
            .map(|(op, w)| (op.name().to_owned(), *w))
            .collect()
    }

    /// The operation of ticket `i`: a hash of `i` into the weights, so operations interleave.
    pub(crate) fn pick(&self, i: u64) -> OpKind {
        let mut r = splitmix64(i) % self.total;
        for (op, w) in &self.parts {
            let w = u64::from(*w);
            if r < w {
                return *op;
            }
            r -= w;
        }
        self.parts.last().map_or(OpKind::Datakey, |(op, _)| *op)
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One run's shape.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Workers, i.e. operations in flight at most.
    pub(crate) concurrency: usize,
    /// When to stop.
    pub(crate) stop: Stop,
    /// Open-loop target rate in operations per second (all workers together).
    pub(crate) rate: Option<f64>,
    /// What to send.
    pub(crate) mix: Mix,
    /// Print a progress line on stderr.
    pub(crate) progress: bool,
    /// Label of the progress line ("warmup", "bench").
    pub(crate) label: &'static str,
}

/// Per-worker tallies, merged at the end.
struct Tally {
    latency: BTreeMap<OpKind, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
}

/// Runs `plan` against `target` and returns the merged measurements.
///
/// # Errors
/// Only if the histograms cannot be created.
pub(crate) async fn run(
    target: Arc<Target>,
    plan: &Plan,
) -> Result<Outcome, hdrhistogram::CreationError> {
    let empty = histogram()?;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let finished = Arc::new(AtomicBool::new(false));
    let progress = plan.progress.then(|| {
        tokio::spawn(progress_line(
            plan.label,
            start,
            Arc::clone(&done),
            Arc::clone(&failed),
            Arc::clone(&finished),
        ))
    });
    let mut workers = Vec::with_capacity(plan.concurrency);
    for worker in 0..plan.concurrency.max(1) {
        let ctx = WorkerCtx {
            target: Arc::clone(&target),
            next: Arc::clone(&next),
            done: Arc::clone(&done),
            failed: Arc::clone(&failed),
            mix: plan.mix.clone(),
            empty: empty.clone(),
            stop: plan.stop,
            rate: plan.rate,
            start,
            worker,
        };
        workers.push(tokio::spawn(ctx.run()));
    }
    let mut outcome = Outcome {
        latency: BTreeMap::new(),
        errors: BTreeMap::new(),
        elapsed: Duration::ZERO,
    };
    for w in workers {
        let tally = match w.await {
            Ok(t) => t,
            Err(e) => {
                *outcome.errors.entry(format!("worker: {e}")).or_default() += 1;
                continue;
            }
        };
        for (op, h) in tally.latency {
            let merged = outcome.latency.entry(op).or_insert_with(|| empty.clone());
            // Same bounds on both sides, so adding cannot fail; saturate if it ever does.
            if merged.add(&h).is_err() {
                merged.saturating_record_n(h.max(), h.len());
            }
        }
        for (code, n) in tally.errors {
            *outcome.errors.entry(code).or_default() += n;
        }
    }
    outcome.elapsed = start.elapsed();
    finished.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ended = p.await;
    }
    Ok(outcome)
}

struct WorkerCtx {
    target: Arc<Target>,
    next: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    mix: Mix,
    empty: Histogram<u64>,
    stop: Stop,
    rate: Option<f64>,
    start: Instant,
    worker: usize,
}

impl WorkerCtx {
    async fn run(self) -> Tally {
        let mut tally = Tally {
            latency: self.mix.ops().map(|op| (op, self.empty.clone())).collect(),
            errors: BTreeMap::new(),
        };
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if let Stop::Requests(n) = self.stop
                && i >= n
            {
                break;
            }
            let begin = match self.rate {
                Some(rate) => {
                    // Precision loss above 2^53 tickets is irrelevant here.
                    #[allow(clippy::cast_precision_loss)]
                    let at = self.start + Duration::from_secs_f64(i as f64 / rate);
                    // Stop at the deadline both by schedule and by the clock: a server far
                    // behind must not stretch the run (the backlog shows in the latencies).
                    if let Stop::Duration(d) = self.stop
                        && (at >= self.start + d || Instant::now() >= self.start + d)
                    {
                        break;
                    }
                    tokio::time::sleep_until(at).await;
                    at
                }
                None => {
                    let now = Instant::now();
                    if let Stop::Duration(d) = self.stop
                        && now >= self.start + d
                    {
                        break;
                    }
                    now
                }
            };
            let op = self.mix.pick(i);
            match self.target.call(op, self.worker).await {
                Ok(()) => {
                    let us = u64::try_from(begin.elapsed().as_micros()).unwrap_or(u64::MAX);
                    if let Some(h) = tally.latency.get_mut(&op) {
                        h.saturating_record(us.max(1));
                    }
                    self.done.fetch_add(1, Ordering::Relaxed);
                }
                Err(code) => {
                    *tally.errors.entry(code).or_default() += 1;
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tally
    }
}

/// Prints `label  12.0s  123456 ok  10288/s  0 errors` on stderr: rewritten in place every
/// half second on a terminal, one line every 5 s otherwise (logs, CI).
async fn progress_line(
    label: &'static str,
    start: Instant,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    finished: Arc<AtomicBool>,
) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let mut tick = tokio::time::interval_at(start + every, every);
    let (mut last_n, mut last_t) = (0u64, start);
    while !finished.load(Ordering::Relaxed) {
        tick.tick().await;
        if finished.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        let n = done.load(Ordering::Relaxed);
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
        #[allow(clippy::cast_precision_loss)]
        let rate = (n - last_n.min(n)) as f64 / dt;
        (last_n, last_t) = (n, now);
        let line = format!(
            "{label} {:6.1}s {n:>10} ok {rate:>9.0}/s {:>6} errors",
            now.duration_since(start).as_secs_f64(),
            failed.load(Ordering::Relaxed),
        );
        let mut err = std::io::stderr().lock();
        // Progress is best effort: a closed stderr must not fail the run.
        let _ignored = if tty {
            write!(err, "\r{line}").and_then(|()| err.flush())
        } else {
            writeln!(err, "{line}")
        };
    }
    if tty {
        let _ignored = write!(std::io::stderr().lock(), "\r{:60}\r", "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_spreads_by_weight() -> Result<(), String> {
        let mix = Mix::parse("datakey=70, decrypt=30")?;
        let mut dk = 0;
        for i in 0..10_000 {
            if mix.pick(i) == OpKind::Datakey {
                dk += 1;
            }
        }
        assert!((6_500..7_500).contains(&dk), "{dk} datakeys of 10000");
        assert_eq!(
            mix.ops().collect::<Vec<_>>(),
            [OpKind::Datakey, OpKind::Decrypt]
        );
        Ok(())
    }

    #[test]
    fn mix_rejects_bad_input() {
        for bad in [
            "",
            "datakey",
            "datakey=0",
            "datakey=x",
            "wrap=5",
            "datakey=1,datakey=2",
            "datakey=-1",
        ] {
            assert!(Mix::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn single_mix_always_picks_its_op() {
        let mix = Mix::single(OpKind::Encrypt);
        assert!((0..100).all(|i| mix.pick(i) == OpKind::Encrypt));
    }
}
