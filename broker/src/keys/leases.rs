//! Leases after their audit record (DESIGN §6). The audit record is the durable record of a
//! release; the lease row in the catalog follows it:
//!
//! - the key service leaves a [`ReleaseTicket`] on the caller's slot when its gate opens;
//! - the API's recorder appends the audit record with it — the PostgreSQL log checks the gate
//!   again and inserts the lease in its own transaction, the file log hands the lease back;
//! - a handed-back lease goes to the [`LeaseWriter`], which inserts rows in background batches
//!   (SQLite `synchronous=NORMAL`), each carrying its record's index;
//! - at start, [`replay`] finds in the log the unexpired leases a crash kept from the catalog.
//!
//! `RevokeLeases` flushes the writer first, so every lease acknowledged before it is marked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{LeaseRecord, Store};

/// What the gate checked, for a log that checks it again in its own transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateCheck {
    /// Key name.
    pub key: String,
    /// Version a new ciphertext was sealed under.
    pub wrap_version: Option<u32>,
    /// Version of a ciphertext that was opened.
    pub open_version: Option<u32>,
    /// Token issuer.
    pub issuer: String,
    /// Subject.
    pub subject: String,
    /// Job id from verified identity.
    pub job_id: Option<String>,
    /// The gate's time (unix seconds).
    pub now: i64,
}

/// What a release whose gate opened leaves for its audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseTicket {
    /// The gate, to check again where the log can.
    pub check: GateCheck,
    /// The lease of released plaintext, to record after the audit record.
    pub lease: Option<LeaseRecord>,
}

/// Where the key service leaves the ticket of one call (shared with the call's recorder).
pub type TicketSlot = Arc<Mutex<Option<ReleaseTicket>>>;

/// Leases per catalog transaction.
const BATCH: usize = 512;
/// Leases waiting for the writer before callers wait for room.
const QUEUE: usize = 16_384;

enum Msg {
    Lease(Box<(LeaseRecord, u64)>),
    Flush(oneshot::Sender<()>),
}

/// Inserts leases in the background, in batches.
#[derive(Debug, Clone)]
pub struct LeaseWriter {
    tx: mpsc::Sender<Msg>,
}

impl LeaseWriter {
    /// Starts the writer task over `store` (it ends when every handle is dropped).
    #[must_use]
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, rx));
        Self { tx }
    }

    /// Queues `lease`, whose release is record `index` of the audit log.
    pub async fn push(&self, lease: LeaseRecord, index: u64) {
        if self
            .tx
            .send(Msg::Lease(Box::new((lease, index))))
            .await
            .is_err()
        {
            // Shutting down: the lease is in the audit log and is re-inserted at next start.
            tracing::debug!(
                index,
                "lease writer stopped; the lease is replayed at start"
            );
        }
    }

    /// Waits until every lease queued before this call is in the catalog (or failed, logged).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Msg>) {
    let mut leases = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Lease(l) => leases.push(*l),
                Msg::Flush(f) => flushes.push(f),
            }
            if leases.len() >= BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !leases.is_empty() {
            write(store.as_ref(), &leases).await;
            leases.clear();
        }
        for f in flushes.drain(..) {
            let _ = f.send(());
        }
    }
}

/// Inserts a batch, retrying a few times: the rows are also in the audit log, so a batch that
/// still fails is logged and re-inserted at the next start.
async fn write(store: &dyn Store, leases: &[(LeaseRecord, u64)]) {
    let mut wait = Duration::from_millis(20);
    for attempt in 1..=5 {
        match store.insert_leases(leases).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, attempt, count = leases.len(),
                    "lease rows not written yet (they are in the audit log)");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

/// The lease of an audit record (canonical JSON) that released plaintext under a lease still
/// unexpired at `now`; `None` for every other record. Cheap for the others: the bytes are
/// searched before they are parsed.
#[must_use]
pub fn from_record(bytes: &[u8], now: i64) -> Option<(LeaseRecord, u64)> {
    const MARK: &[u8] = b"\"lease_expires_at\":";
    if !bytes.windows(MARK.len()).any(|w| w == MARK) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if v.pointer("/outcome/code")?.as_str()? != "ok" {
        return None;
    }
    let expires_at = v.get("lease_expires_at")?.as_i64()?;
    if expires_at <= now {
        return None;
    }
    let op = match v.get("op")?.as_str()? {
        "generate_data_key" => "GenerateDataKey",
        "decrypt" => "Decrypt",
        _ => return None,
    };
    let text = |p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let issued_at = time::OffsetDateTime::parse(
        v.get("time")?.as_str()?,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()?
    .unix_timestamp();
    let lease = LeaseRecord {
        lease_id: text("/lease_id")?,
        key_name: text("/key_name")?,
        version: u32::try_from(v.get("key_version")?.as_u64()?).ok()?,
        op,
        issuer: text("/principal/issuer")?,
        subject: text("/principal/subject")?,
        job_id: text("/principal/job"),
        issued_at,
        expires_at,
    };
    Some((lease, v.get("index")?.as_u64()?))
}

/// Inserts into the catalog the unexpired leases of `found` (from [`from_record`] over the log
/// at start); they may already be there.
///
/// # Errors
/// Database failures: the broker must not start without its leases.
pub async fn replay(
    store: &dyn Store,
    found: &[(LeaseRecord, u64)],
) -> Result<(), crate::store::StoreError> {
    for chunk in found.chunks(BATCH) {
        store.insert_leases(chunk).await?;
    }
    if !found.is_empty() {
        tracing::info!(
            leases = found.len(),
            "unexpired leases re-inserted from the audit log"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::audit::{AuditPrincipal, AuditRecord, Op};

    fn record(op: Op, code: &str, expires: Option<i64>) -> Vec<u8> {
        let mut r = AuditRecord::new(op, "rid".into(), "replica".into());
        r.index = 7;
        r.time = "2026-12-07T10:00:00Z".into();
        r.principal = Some(AuditPrincipal {
            issuer: "iss".into(),
            subject: "sub".into(),
            job: Some("job-1".into()),
            ..AuditPrincipal::default()
        });
        r.key_name = Some("datasets/a".into());
        r.key_version = Some(3);
        r.lease_id = Some("lease-1".into());
        r.lease_expires_at = expires;
        "ok".clone_into(&mut r.outcome.code);
        if code != "ok" {
            r.outcome.code = code.into();
        }
        r.to_canonical_json().unwrap()
    }

    #[test]
    fn a_granted_release_record_gives_back_its_lease() {
        let (lease, index) =
            from_record(&record(Op::GenerateDataKey, "ok", Some(2_000_000_000)), 1).unwrap();
        assert_eq!(index, 7);
        assert_eq!(
            lease,
            LeaseRecord {
                lease_id: "lease-1".into(),
                key_name: "datasets/a".into(),
                version: 3,
                op: "GenerateDataKey",
                issuer: "iss".into(),
                subject: "sub".into(),
                job_id: Some("job-1".into()),
                issued_at: 1_796_637_600,
                expires_at: 2_000_000_000,
            }
        );
        assert!(from_record(&record(Op::Decrypt, "ok", Some(2_000_000_000)), 1).is_some());
    }

    #[test]
    fn refusals_expired_leases_and_other_records_give_nothing() {
        assert!(
            from_record(
                &record(Op::GenerateDataKey, "permission_denied", Some(5)),
                1
            )
            .is_none()
        );
        assert!(from_record(&record(Op::GenerateDataKey, "ok", Some(5)), 5).is_none());
        assert!(from_record(&record(Op::GenerateDataKey, "ok", None), 1).is_none());
        assert!(from_record(&record(Op::Encrypt, "ok", Some(50)), 1).is_none());
        assert!(from_record(b"\"lease_expires_at\": not json", 1).is_none());
    }
}
