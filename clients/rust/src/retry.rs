//! Retries of broker calls: exponential backoff with full jitter, a bounded number of attempts,
//! and only for codes that say "not done, try later".
//!
//! Which codes are retried, and why:
//! - `UNAVAILABLE`: the broker could not serve (HSM or audit log down, broker restarting,
//!   connection refused). The broker answers it before releasing anything, so a repeat cannot
//!   release a second key behind the caller's back. Always retried.
//! - `RESOURCE_EXHAUSTED`: a limit refused the request before any work was done. Always
//!   retried, with the same backoff so we do not hammer a broker that is shedding load.
//! - `DEADLINE_EXCEEDED`: the deadline ran out, but the broker may have done the work. A repeat
//!   is harmless only for idempotent calls (opening a wrapped key, reading key metadata: the
//!   answer is the same). `GenerateDataKey`, `Encrypt` and the administrative writes are not
//!   idempotent (a second data key, a second wrap counted against the key version's IV budget, a
//!   second rotation), so for them it is returned to the caller.
//!
//! Everything else (`PERMISSION_DENIED` for a revoked job, `FAILED_PRECONDITION` for a
//! disabled key, `INVALID_ARGUMENT`, …) is final and returned at once: retrying would only hide
//! a decision the broker already made.

use std::future::Future;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};

use crate::ClientError;

/// How often and how patiently a call is repeated on a retryable error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (1 = no retries). Capped at 10.
    pub max_attempts: u32,
    /// Backoff ceiling before the first retry; doubles for each further retry.
    pub initial_backoff: Duration,
    /// Largest backoff ceiling.
    pub max_backoff: Duration,
}

/// Upper bound on [`RetryPolicy::max_attempts`], whatever the configuration says.
pub const MAX_ATTEMPTS: u32 = 10;

impl Default for RetryPolicy {
    /// 4 attempts, backoff ceilings 100 ms, 200 ms, 400 ms (at most 2 s).
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    #[must_use]
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff ceiling before retry number `retry` (1-based): `initial × 2^(retry-1)`,
    /// capped at `max_backoff`.
    #[must_use]
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Runs `op` (given the attempt number, from 1) until it succeeds, fails with an error that
    /// is not retryable for a call of this `idempotent`-ness, or the attempts run out; then
    /// returns the last result. Sleeps a uniformly random time in `[0, ceiling]` between
    /// attempts ("full jitter"), so clients that failed together do not retry together.
    ///
    /// # Errors
    /// The last error of `op`.
    pub async fn run<T, F, Fut>(&self, idempotent: bool, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let attempts = self.max_attempts.clamp(1, MAX_ATTEMPTS);
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Err(e) if attempt < attempts && retryable(&e, idempotent) => {
                    tokio::time::sleep(jitter(self.ceiling(attempt))).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// True when `err` may succeed on a repeat of a call of this `idempotent`-ness (module doc).
#[must_use]
pub fn retryable(err: &ClientError, idempotent: bool) -> bool {
    match err.code() {
        Some(tonic::Code::Unavailable | tonic::Code::ResourceExhausted) => true,
        Some(tonic::Code::DeadlineExceeded) => idempotent,
        _ => false,
    }
}

/// A uniformly random duration in `[0, ceiling]`; the ceiling itself when the system random
/// generator fails (the retry still happens, only without jitter).
fn jitter(ceiling: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        return ceiling;
    }
    let fraction = f64::from(u32::from_be_bytes(bytes)) / f64::from(u32::MAX);
    ceiling.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn status(code: tonic::Code) -> ClientError {
        ClientError::Status {
            code,
            message: String::new(),
            request_id: "r".into(),
        }
    }

    /// Runs `policy` over an op that fails with `codes` in turn (then succeeds); returns the
    /// result and the number of attempts made.
    async fn drive(
        policy: RetryPolicy,
        idempotent: bool,
        codes: &[tonic::Code],
    ) -> (Result<u32, ClientError>, u32) {
        let calls = AtomicU32::new(0);
        let r = policy
            .run(idempotent, |attempt| {
                calls.fetch_add(1, Ordering::SeqCst);
                let next = codes.get(attempt as usize - 1).copied();
                async move {
                    match next {
                        Some(code) => Err(status(code)),
                        None => Ok(attempt),
                    }
                }
            })
            .await;
        (r, calls.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn unavailable_and_resource_exhausted_are_retried_until_success() {
        use tonic::Code::{ResourceExhausted, Unavailable};
        let (r, calls) = drive(
            RetryPolicy::default(),
            false,
            &[Unavailable, ResourceExhausted],
        )
        .await;
        assert_eq!(r.ok(), Some(3));
        assert_eq!(calls, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_are_bounded_and_the_last_error_is_returned() {
        let codes = [tonic::Code::Unavailable; 20];
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        let (r, calls) = drive(policy, true, &codes).await;
        assert_eq!(calls, 3);
        assert_eq!(
            r.err().and_then(|e| e.code()),
            Some(tonic::Code::Unavailable)
        );
        let huge = RetryPolicy {
            max_attempts: 1000,
            ..RetryPolicy::default()
        };
        assert_eq!(drive(huge, true, &codes).await.1, MAX_ATTEMPTS);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_exceeded_is_retried_only_for_idempotent_calls() {
        let codes = [tonic::Code::DeadlineExceeded];
        assert_eq!(drive(RetryPolicy::default(), true, &codes).await.1, 2);
        let (r, calls) = drive(RetryPolicy::default(), false, &codes).await;
        assert_eq!(calls, 1);
        assert!(r.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn final_codes_are_not_retried() {
        use tonic::Code::*;
        for code in [
            PermissionDenied,
            FailedPrecondition,
            InvalidArgument,
            Unauthenticated,
            Internal,
        ] {
            assert_eq!(
                drive(RetryPolicy::default(), true, &[code]).await.1,
                1,
                "{code:?}"
            );
        }
        let not_status = RetryPolicy::default()
            .run(true, |_| async {
                Err::<(), _>(ClientError::Config("x".into()))
            })
            .await;
        assert!(not_status.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_waits_at_most_the_doubling_ceilings() {
        let policy = RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
        };
        assert_eq!(policy.ceiling(1), Duration::from_millis(100));
        assert_eq!(policy.ceiling(2), Duration::from_millis(200));
        assert_eq!(policy.ceiling(3), Duration::from_millis(250));
        assert_eq!(policy.ceiling(40), Duration::from_millis(250));
        let start = tokio::time::Instant::now();
        let _ = drive(policy, true, &[tonic::Code::Unavailable; 4]).await;
        // Three sleeps of at most 100 + 200 + 250 ms (paused time advances exactly).
        assert!(start.elapsed() <= Duration::from_millis(550));
    }

    #[test]
    fn jitter_stays_within_the_ceiling() {
        let ceiling = Duration::from_millis(300);
        for _ in 0..200 {
            assert!(jitter(ceiling) <= ceiling);
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
