//! Probe traffic for `drill revoke`: workers alternate GenerateDataKey and Decrypt of the
//! archived ciphertext and record, per request, when it started, when it ended and how.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keybroker_client::Client;
use serde::Serialize;
use tokio::task::JoinHandle;

/// Longest a drill waits for probe traffic to build up or to be denied.
const PHASE_LIMIT: Duration = Duration::from_secs(30);

/// The encryption context of drill traffic: it lands in the audit records in clear.
pub(crate) fn context(kind: &str, drill_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("drill".to_owned(), kind.to_owned()),
        ("drill_id".to_owned(), drill_id.to_owned()),
    ])
}

/// One probe request.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    started: Instant,
    finished: Instant,
    ok: bool,
}

/// Running probe workers.
pub(crate) struct Probes {
    samples: Arc<Mutex<Vec<Sample>>>,
    ok: Arc<AtomicUsize>,
    after: Arc<AtomicUsize>,
    disabled_at: Arc<Mutex<Option<Instant>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl Probes {
    /// Starts `n` workers on `key`.
    pub(crate) fn start(
        c: &Client,
        key: &str,
        ctx: &BTreeMap<String, String>,
        archived: &[u8],
        n: u16,
    ) -> Self {
        let this = Self {
            samples: Arc::default(),
            ok: Arc::default(),
            after: Arc::default(),
            disabled_at: Arc::default(),
            stop: Arc::default(),
            workers: Vec::new(),
        };
        let mut workers = Vec::new();
        for i in 0..n {
            let (c, key, ctx, ct) = (c.clone(), key.to_owned(), ctx.clone(), archived.to_vec());
            let (samples, ok, after) = (this.samples.clone(), this.ok.clone(), this.after.clone());
            let (disabled_at, stop) = (this.disabled_at.clone(), this.stop.clone());
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let good = if i % 2 == 0 {
                        c.generate_data_key(&key, &ctx, None).await.is_ok()
                    } else {
                        c.decrypt(&ct, &ctx, None).await.is_ok()
                    };
                    let finished = Instant::now();
                    if good {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    let after_disable = disabled_at
                        .lock()
                        .ok()
                        .and_then(|d| *d)
                        .is_some_and(|d| started >= d);
                    if after_disable {
                        after.fetch_add(1, Ordering::SeqCst);
                    }
                    if let Ok(mut s) = samples.lock() {
                        s.push(Sample {
                            started,
                            finished,
                            ok: good,
                        });
                    }
                }
            }));
        }
        Self { workers, ..this }
    }

    /// Waits until `n` probes succeeded (or the phase limit).
    pub(crate) async fn wait_for_successes(&self, n: usize) {
        let until = Instant::now() + PHASE_LIMIT;
        while self.ok.load(Ordering::SeqCst) < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Records when DisableKey returned.
    pub(crate) fn mark_disabled(&self, at: Instant) {
        if let Ok(mut d) = self.disabled_at.lock() {
            *d = Some(at);
        }
    }

    /// Lets `n` probes start after the disable returned (or the phase limit), then stops.
    pub(crate) async fn finish_after_disable(self, n: usize) -> Vec<Sample> {
        let until = Instant::now() + PHASE_LIMIT;
        while self.after.load(Ordering::SeqCst) < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers {
            let _ = w.await;
        }
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// What the probes saw.
#[derive(Debug, Serialize)]
pub(crate) struct ProbeStats {
    pub(crate) total: usize,
    pub(crate) succeeded: usize,
    pub(crate) denied: usize,
    pub(crate) started_after_disable_returned: usize,
    /// Must be 0: a probe that started after DisableKey returned and still got key material.
    pub(crate) succeeded_after_disable_returned: usize,
    /// How soon after DisableKey returned the first probe started (it was denied when
    /// `succeeded_after_disable_returned` is 0): the revocation holds from the next request.
    pub(crate) first_probe_after_disable_started_ms: Option<f64>,
    /// Median probe round trip before the disable: time-to-deny is one round trip when the
    /// very next request is denied.
    pub(crate) median_round_trip_ms: Option<f64>,
    #[serde(skip)]
    pub(crate) time_to_deny: Option<Duration>,
}

impl ProbeStats {
    pub(crate) fn of(samples: &[Sample], returned: Instant) -> Self {
        let after: Vec<&Sample> = samples.iter().filter(|s| s.started >= returned).collect();
        let time_to_deny = after
            .iter()
            .filter(|s| !s.ok)
            .map(|s| s.finished)
            .min()
            .map(|t| t.saturating_duration_since(returned));
        let mut before: Vec<Duration> = samples
            .iter()
            .filter(|s| s.finished < returned && s.ok)
            .map(|s| s.finished - s.started)
            .collect();
        before.sort();
        let median_round_trip_ms = before
            .get(before.len() / 2)
            .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
        let first_probe_after_disable_started_ms = after
            .iter()
            .map(|s| s.started.saturating_duration_since(returned))
            .min()
            .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3);
        Self {
            first_probe_after_disable_started_ms,
            median_round_trip_ms,
            total: samples.len(),
            succeeded: samples.iter().filter(|s| s.ok).count(),
            denied: samples.iter().filter(|s| !s.ok).count(),
            started_after_disable_returned: after.len(),
            succeeded_after_disable_returned: after.iter().filter(|s| s.ok).count(),
            time_to_deny,
        }
    }
}
