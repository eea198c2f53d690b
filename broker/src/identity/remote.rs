//! JWKS from a URL, cached per issuer.
//!
//! - Freshness follows `Cache-Control: max-age`, clamped to [`Limits::min_age`,
//!   `Limits::max_age`]; a background task refreshes when it runs out.
//! - An unknown `kid` triggers one refetch, but only one fetch runs at a time (the others wait
//!   for it) and at most one starts per [`Limits::cooldown`], so a flood of random `kid`s
//!   cannot turn the broker into an amplifier against the issuer.
//! - A failed fetch keeps the last good key set; until a first fetch succeeds the issuer has
//!   no keys and its tokens are refused ([`super::Reason::JwksUnavailable`]).
//! - Bodies are capped ([`Limits::max_body`]), as are connect and total time; no redirects.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_util::sync::CancellationToken;

use super::jwks::{self, KeyMap};

/// Bounds of fetching and caching.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) connect_timeout: Duration,
    pub(crate) timeout: Duration,
    pub(crate) max_body: usize,
    pub(crate) cooldown: Duration,
    pub(crate) min_age: Duration,
    pub(crate) max_age: Duration,
    pub(crate) default_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_body: 256 * 1024,
            cooldown: Duration::from_secs(30),
            min_age: Duration::from_secs(60),
            max_age: Duration::from_secs(24 * 3600),
            default_age: Duration::from_secs(300),
        }
    }
}

/// Monotonic time, with a test-only offset so cooldown and max-age can be tested without
/// waiting.
#[derive(Debug, Clone, Default)]
pub(crate) struct Clock {
    offset_ms: Option<Arc<AtomicU64>>,
}

impl Clock {
    pub(crate) fn now(&self) -> Instant {
        let skip = self
            .offset_ms
            .as_ref()
            .map_or(0, |o| o.load(Ordering::SeqCst));
        Instant::now() + Duration::from_millis(skip)
    }

    #[cfg(test)]
    pub(crate) fn manual() -> Self {
        Self {
            offset_ms: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    #[cfg(test)]
    pub(crate) fn advance(&self, d: Duration) {
        if let Some(o) = &self.offset_ms {
            o.fetch_add(
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                Ordering::SeqCst,
            );
        }
    }
}

/// Why one fetch failed (server log only).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// Connection, TLS, timeout or protocol failure.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// Not a 2xx answer (redirects are not followed).
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body exceeds the cap.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// The body is not a usable JWKS.
    #[error("{0}")]
    Jwks(String),
}

struct Schedule {
    last_attempt: Option<Instant>,
    next_refresh: Instant,
}

/// One issuer's JWKS URL and its cached key set.
pub(crate) struct RemoteJwks {
    issuer: String,
    url: String,
    client: reqwest::Client,
    limits: Limits,
    clock: Clock,
    keys: RwLock<Option<Arc<KeyMap>>>,
    gate: tokio::sync::Mutex<Schedule>,
    /// Fetch attempts and failed ones since start (for metrics).
    fetches: AtomicU64,
    failures: AtomicU64,
}

impl RemoteJwks {
    /// A cache for `url` with nothing fetched yet (due at once).
    ///
    /// # Errors
    /// The CA file is unreadable or holds no certificate, or the HTTP client cannot be built.
    pub(crate) fn new(
        issuer: &str,
        url: &str,
        ca_file: Option<&Path>,
        limits: Limits,
        clock: Clock,
    ) -> Result<Self, String> {
        let client = http_client(ca_file, &limits)?;
        let now = clock.now();
        Ok(Self {
            issuer: issuer.to_owned(),
            url: url.to_owned(),
            client,
            limits,
            clock,
            keys: RwLock::new(None),
            gate: tokio::sync::Mutex::new(Schedule {
                last_attempt: None,
                next_refresh: now,
            }),
            fetches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// Fetch attempts and failures since start.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.fetches.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// The last good key set, if any fetch ever succeeded.
    pub(crate) fn current(&self) -> Option<Arc<KeyMap>> {
        self.keys.read().map_or(None, |k| k.clone())
    }

    /// After a token named `kid` that the cached set lacks (or no set is loaded): refetch,
    /// unless a fetch started less than a cooldown ago. Concurrent callers wait for the one
    /// fetch in flight. Returns whether `kid` is known afterwards.
    pub(crate) async fn refetch_for(&self, kid: &str) -> bool {
        let mut schedule = self.gate.lock().await;
        if self.knows(kid) {
            return true; // fetched by whoever held the gate before us
        }
        let now = self.clock.now();
        if schedule
            .last_attempt
            .is_some_and(|t| now < t + self.limits.cooldown)
        {
            return false;
        }
        self.fetch_locked(&mut schedule, now).await;
        self.knows(kid)
    }

    /// Fetches if the cached set is due (max-age ran out, or a retry after a failure);
    /// returns how long until the next refresh is due.
    pub(crate) async fn refresh_if_due(&self) -> Duration {
        let mut schedule = self.gate.lock().await;
        let now = self.clock.now();
        if now >= schedule.next_refresh {
            self.fetch_locked(&mut schedule, now).await;
        }
        schedule
            .next_refresh
            .saturating_duration_since(self.clock.now())
    }

    /// Background refresh until `cancel` fires.
    pub(crate) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let wait = self.refresh_if_due().await;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn knows(&self, kid: &str) -> bool {
        self.current().is_some_and(|k| k.contains_key(kid))
    }

    async fn fetch_locked(&self, schedule: &mut Schedule, now: Instant) {
        schedule.last_attempt = Some(now);
        self.fetches.fetch_add(1, Ordering::Relaxed);
        match self.fetch().await {
            Ok((keys, max_age)) => {
                let fresh = freshness(max_age, &self.limits);
                tracing::info!(issuer = %self.issuer, url = %self.url, keys = keys.len(),
                    fresh_for = ?fresh, "JWKS fetched");
                if let Ok(mut slot) = self.keys.write() {
                    *slot = Some(keys);
                }
                schedule.next_refresh = now + fresh;
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let kept = self.current().map_or(0, |k| k.len());
                tracing::warn!(issuer = %self.issuer, url = %self.url, error = %e,
                    kept_keys = kept, retry_in = ?self.limits.cooldown,
                    "JWKS fetch failed; keeping the last good key set");
                schedule.next_refresh = now + self.limits.cooldown;
            }
        }
    }

    async fn fetch(&self) -> Result<(Arc<KeyMap>, Option<u64>), FetchError> {
        let mut resp = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let max = self.limits.max_body;
        if resp
            .content_length()
            .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
        {
            return Err(FetchError::TooLarge(max));
        }
        let max_age = resp
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > max {
                return Err(FetchError::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        let keys = jwks::parse(&body).map_err(FetchError::Jwks)?;
        Ok((keys, max_age))
    }
}

/// `max-age=N` of a `Cache-Control` value; `no-cache`/`no-store` count as 0 (then clamped up).
pub(crate) fn max_age(value: &str) -> Option<u64> {
    value.split(',').find_map(|d| {
        let d = d.trim();
        if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
            return Some(0);
        }
        let (name, v) = d.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
    })
}

/// How long a fetched set stays fresh: the server's max-age clamped, or the default.
pub(crate) fn freshness(max_age: Option<u64>, limits: &Limits) -> Duration {
    max_age.map_or(limits.default_age, |s| {
        Duration::from_secs(s).clamp(limits.min_age, limits.max_age)
    })
}

/// An HTTP client that trusts `ca_file` only (or the system roots), never follows redirects
/// and gives up after the limits' timeouts.
fn http_client(ca_file: Option<&Path>, limits: &Limits) -> Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt as _;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let tls = match ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("jwks_ca_file {}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "jwks_ca_file {}: no usable CA certificate",
                    path.display()
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .with_platform_verifier()
            .map_err(|e| format!("system trust roots: {e}"))?
            .with_no_client_auth(),
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(limits.connect_timeout)
        .timeout(limits.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("keybroker/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}
