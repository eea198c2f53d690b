//! GCM use counts reserved in blocks (DESIGN §6): the catalog's `wrap_count` of a version is
//! an upper bound of the wraps made under it, raised durably one block at a time *before* the
//! wraps of that block are made — as PostgreSQL pre-logs sequence values. Within a block each
//! wrap is counted in memory, so the release path makes no catalog write but once per block.
//! A crash forfeits the rest of a block; a number is never reused, so the GCM random-IV bound
//! (2^32 per version) and `rotate_after_wraps` stay exact upper bounds.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Store, StoreError};

/// Wraps reserved per catalog write.
pub const BLOCK: u64 = 65_536;

#[derive(Debug, Clone, Copy)]
struct Counter {
    /// Wraps counted (numbers handed out) under this version.
    used: u64,
    /// Durably reserved up to here.
    upper: u64,
}

/// The in-memory counters of one broker process.
#[derive(Debug, Default)]
pub struct WrapCounters {
    counters: Mutex<HashMap<(String, u32), Counter>>,
    /// One reservation at a time (callers that find the block used up wait for it).
    reserving: tokio::sync::Mutex<()>,
}

impl WrapCounters {
    fn try_take(&self, key: &(String, u32)) -> Option<u64> {
        let mut map = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = map.get_mut(key)?;
        (c.used < c.upper).then(|| {
            c.used += 1;
            c.used
        })
    }

    /// Counts one wrap under `name` v`version` and returns the count including it, or `None`
    /// when the version takes no more (not enabled, or at the GCM limit).
    ///
    /// # Errors
    /// The reservation write failed: nothing may be wrapped.
    pub async fn take(
        &self,
        store: &dyn Store,
        name: &str,
        version: u32,
    ) -> Result<Option<u64>, StoreError> {
        let key = (name.to_owned(), version);
        if let Some(n) = self.try_take(&key) {
            return Ok(Some(n));
        }
        let _one = self.reserving.lock().await;
        if let Some(n) = self.try_take(&key) {
            return Ok(Some(n));
        }
        let Some((before, upper)) = store.reserve_wraps(name, version, BLOCK).await? else {
            return Ok(None);
        };
        let mut map = self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = map.entry(key).or_insert(Counter {
            used: before,
            upper: before,
        });
        // The numbers after `before` are this process's alone. It is where this process's last
        // block ended, or — after a start, or when another replica reserved meanwhile — further
        // on: whatever lies between was reserved by a run that is gone or by another replica.
        c.used = before;
        c.upper = upper;
        if c.used >= c.upper {
            return Ok(None);
        }
        c.used += 1;
        Ok(Some(c.used))
    }
}
