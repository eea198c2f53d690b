//! The lifecycle scheduler: one background task that destroys keys at the end of their waiting
//! period, rotates keys whose `rotation_period` is due or whose version reached
//! `rotate_after_wraps`, and writes one audit record per action.
//!
//! Deadlines live in the catalog, not in memory: a restart loses nothing, and each automatic
//! rotation is claimed by a compare-and-set on `next_rotation_at` in the same transaction that
//! reserves the new version, so no rotation happens twice or is skipped. Destruction is
//! idempotent (a missing HSM object counts as destroyed) and the key is marked `DESTROYED` only
//! after its audit record is durable.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::audit::{AuditLog, AuditRecord, Decision, Op};
use crate::hsm::HsmError;
use crate::store::{KeyRecord, VersionState};

use super::KeyError;
use super::name::KeyName;
use super::service::KeyService;

/// Longest wait between two scans when no deadline is known.
const IDLE_RESCAN_SECS: i64 = 300;
/// Pause after a failed scan (HSM or catalog down), in real time.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// The scheduler task's state.
#[derive(Debug)]
pub struct Scheduler {
    keys: KeyService,
    audit: Arc<dyn AuditLog>,
    replica_id: String,
}

impl Scheduler {
    /// A scheduler over `keys`, auditing into `audit` as `replica_id`.
    pub fn new(keys: KeyService, audit: Arc<dyn AuditLog>, replica_id: String) -> Self {
        Self {
            keys,
            audit,
            replica_id,
        }
    }

    /// Runs until `cancel`: scan, then sleep until the next deadline, a wake-up, or cancel.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let ok = self.scan().await;
            let clock = self.keys.clock().clone();
            let now = clock.now();
            let next = match self.keys.store().next_deadline().await {
                Ok(Some(t)) => t.min(now + IDLE_RESCAN_SECS),
                Ok(None) => now + IDLE_RESCAN_SECS,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler: catalog unavailable");
                    now + 1
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = clock.sleep_until(next), if ok => {}
                () = tokio::time::sleep(ERROR_BACKOFF), if !ok => {}
                () = self.keys.wake.notified() => {}
            }
        }
    }

    /// One pass over everything due now. Returns false when something failed (retried later).
    pub async fn scan(&self) -> bool {
        let now = self.keys.clock().now();
        let mut ok = true;
        match self.keys.store().due_destructions(now).await {
            Ok(keys) => {
                for key in keys {
                    ok &= self.destroy(&key).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduler: cannot list due destructions");
                ok = false;
            }
        }
        match self.keys.store().due_rotations(now).await {
            Ok(keys) => {
                for key in keys {
                    ok &= self.rotate_on_schedule(&key, now).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "scheduler: cannot list due rotations");
                ok = false;
            }
        }
        let wraps: Vec<(String, u32)> = match self.keys.wrap_due.lock() {
            Ok(mut due) => std::mem::take(&mut *due).into_iter().collect(),
            Err(_) => Vec::new(),
        };
        for (name, version) in wraps {
            ok &= self.rotate_after_wraps(&name, version).await;
        }
        ok
    }

    fn record(&self, op: Op, key: &KeyRecord, version: Option<u32>, reason: &str) -> AuditRecord {
        let mut r = AuditRecord::new(
            op,
            uuid::Uuid::new_v4().to_string(),
            self.replica_id.clone(),
        );
        r.key_name = Some(key.name.clone());
        r.key_version = version;
        r.hsm_id = Some(key.hsm_id.clone());
        r.hsm_jurisdiction = self
            .keys
            .hsm_info(&key.hsm_id)
            .map(|h| h.jurisdiction.clone());
        r.decision = Decision::Allow;
        r.reasons = vec![reason.to_owned()];
        "ok".clone_into(&mut r.outcome.code);
        r
    }

    /// Destroys every version's HSM object, audits, then marks the key destroyed.
    async fn destroy(&self, key: &KeyRecord) -> bool {
        let Ok(name) = KeyName::parse(&key.name) else {
            return false;
        };
        let Some(hsm) = self.keys.hsm_info(&key.hsm_id) else {
            tracing::error!(key = %key.name, hsm = %key.hsm_id, "scheduler: HSM of a key due for destruction is not configured");
            return false;
        };
        for v in key
            .versions
            .iter()
            .filter(|v| v.state != VersionState::Destroyed)
        {
            match hsm.pool.destroy_key(&name.hsm_label(v.version)).await {
                Ok(()) | Err(HsmError::KeyNotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(key = %key.name, version = v.version, error = %e, "scheduler: HSM destroy failed; retrying");
                    return false;
                }
            }
        }
        let record = self.record(Op::DestroyKey, key, None, "waiting period ended");
        if let Err(e) = self.audit.append(record).await {
            tracing::error!(key = %key.name, error = %e, "scheduler: audit append failed; destruction will be recorded on retry");
            return false;
        }
        match self.keys.store().mark_destroyed(&key.name).await {
            Ok(()) => {
                tracing::info!(key = %key.name, "key destroyed: HSM objects of every version are gone");
                true
            }
            Err(e) => {
                tracing::warn!(key = %key.name, error = %e, "scheduler: could not mark the key destroyed");
                false
            }
        }
    }

    async fn rotate_on_schedule(&self, key: &KeyRecord, now: i64) -> bool {
        let (Some(due), Some(period)) = (key.next_rotation_at, key.rotation_period_secs) else {
            return true;
        };
        // After an outage longer than a period: one catch-up rotation, then a full period.
        let mut next = due.saturating_add(period);
        if next <= now {
            next = now.saturating_add(period);
        }
        let version = key.latest_version() + 1;
        let Ok(name) = KeyName::parse(&key.name) else {
            return false;
        };
        match self
            .keys
            .store()
            .claim_rotation(&key.name, version, due, next, now)
            .await
        {
            Ok(()) => {}
            // Someone else (a manual rotation, another replica) moved first: nothing to do.
            Err(crate::store::StoreError::Conflict(_)) => return true,
            Err(e) => {
                tracing::warn!(key = %key.name, error = %e, "scheduler: cannot claim rotation");
                return false;
            }
        }
        let result = self.keys.finish_version(key, &name, version, false).await;
        self.audited_rotation(key, version, "rotation_period elapsed", result)
            .await
    }

    async fn rotate_after_wraps(&self, name: &str, version: u32) -> bool {
        let Ok(name) = KeyName::parse(name) else {
            return false;
        };
        let key = match self.keys.get_key(&name).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(key = name.as_str(), error = %e, "scheduler: cannot load key");
                return false;
            }
        };
        if key.latest_version() != version {
            return true; // already rotated
        }
        let result = self.keys.rotate_key(&key).await.map(|_| ());
        if matches!(
            result,
            Err(KeyError::Conflict(_) | KeyError::Precondition(_))
        ) {
            return true;
        }
        self.audited_rotation(&key, version + 1, "rotate_after_wraps reached", result)
            .await
    }

    async fn audited_rotation(
        &self,
        key: &KeyRecord,
        version: u32,
        reason: &str,
        result: Result<(), KeyError>,
    ) -> bool {
        let mut record = self.record(Op::AutoRotateKey, key, Some(version), reason);
        if let Err(e) = &result {
            tracing::warn!(key = %key.name, version, error = %e, "scheduler: automatic rotation failed");
            "unavailable".clone_into(&mut record.outcome.code);
        } else {
            tracing::info!(key = %key.name, version, reason, "key rotated automatically");
        }
        if let Err(e) = self.audit.append(record).await {
            tracing::error!(key = %key.name, version, error = %e, "scheduler: audit append of a rotation failed");
        }
        result.is_ok()
    }
}
