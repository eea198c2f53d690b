//! The broker's clock for lifecycle deadlines (destruction, automatic rotation, lease and
//! revocation expiry): the system clock in production, a manual clock in tests so a test can
//! cross a seven-day deadline at once instead of sleeping.
//!
//! The scheduler never sleeps on its own: it asks the clock to [`Clock::sleep_until`] a
//! deadline, and a [`ManualClock`] wakes every sleeper whenever it is advanced.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

/// A future returned by [`Clock::sleep_until`].
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Wall-clock time in unix seconds, and a way to wait for it.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Now, unix seconds.
    fn now(&self) -> i64;
    /// Resolves at `deadline` or later (it may resolve earlier: callers re-check [`Clock::now`]).
    fn sleep_until(&self, deadline: i64) -> Sleep<'_>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

/// Longest single sleep of the system clock, so a changed wall clock is noticed.
const MAX_SLEEP_SECS: i64 = 60;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn sleep_until(&self, deadline: i64) -> Sleep<'_> {
        let secs = (deadline - self.now()).clamp(0, MAX_SLEEP_SECS);
        let secs = u64::try_from(secs).unwrap_or(0);
        Box::pin(tokio::time::sleep(std::time::Duration::from_secs(secs)))
    }
}

/// A clock that moves only when told to (tests). Clones share the time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    now: AtomicI64,
    moved: Notify,
}

impl ManualClock {
    /// A clock standing at `now` (unix seconds).
    #[must_use]
    pub fn new(now: i64) -> Self {
        Self {
            inner: Arc::new(ManualInner {
                now: AtomicI64::new(now),
                moved: Notify::new(),
            }),
        }
    }

    /// A clock standing at the current system time.
    #[must_use]
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now())
    }

    /// Moves the clock forward by `secs` and wakes every sleeper.
    pub fn advance(&self, secs: i64) {
        self.inner.now.fetch_add(secs, Ordering::SeqCst);
        self.inner.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.inner.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, deadline: i64) -> Sleep<'_> {
        Box::pin(async move {
            loop {
                // Register before checking, so an advance between check and wait is not lost.
                let moved = self.inner.moved.notified();
                if self.now() >= deadline {
                    return;
                }
                moved.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_past_the_deadline() {
        let clock = ManualClock::new(100);
        let c2 = clock.clone();
        let sleeper = tokio::spawn(async move { c2.sleep_until(110).await });
        tokio::task::yield_now().await;
        clock.advance(5);
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(5);
        tokio::time::timeout(std::time::Duration::from_secs(5), sleeper)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(clock.now(), 110);
    }
}
