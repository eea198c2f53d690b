//! The audit log (DESIGN §6): one typed record per key operation, granted or denied, made
//! durable before any key material leaves. Fail closed: a record that cannot be made durable
//! refuses the operation, and after a write or fsync error the log refuses everything until
//! restart.
//!
//! [`AuditLog`] is the seam: the embedded [`FileAuditLog`] (segment files, group commit) today,
//! a PostgreSQL-sequenced log for several replicas later.

pub mod checkpoint;
mod log;
mod pg;
pub mod record;
mod segment;
mod signer;
pub mod tiles;

use std::path::PathBuf;

use keybroker_formats::tlog::Hash;

pub use checkpoint::store_checkpoint;
pub use log::{CommitObserver, FileAuditLog};
pub use pg::{PgAuditLog, lead as lead_pg_publisher, origin as pg_origin};
pub use record::{
    AttestationAudit, AuditPrincipal, AuditRecord, Decision, Op, Outcome, SignedFacts,
    SignedSubject, Surface, XksFacts,
};

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log: cannot {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Acknowledged records are damaged (not a torn tail).
    #[error("audit log: {path} is corrupt: {problem}")]
    Corrupt {
        /// The damaged segment.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A record did not encode.
    #[error("audit record does not encode: {0}")]
    Encode(#[source] serde_json::Error),
    /// A record is larger than 16 KiB.
    #[error("audit record is {len} bytes; at most 16 KiB are allowed")]
    RecordTooLarge {
        /// Its encoded size.
        len: usize,
    },
    /// An earlier write or fsync failed: nothing is accepted until restart.
    #[error("audit log is poisoned by an earlier write failure; restart required")]
    Poisoned,
    /// The PostgreSQL log refused or lost the commit (the outcome may be unknown: the
    /// operation is refused either way).
    #[error("audit log database: {0}")]
    Database(String),
    /// The writer has stopped (shutdown).
    #[error("audit log is closed")]
    Closed,
    /// The log's own gate check (in the PostgreSQL transaction) found the release no longer
    /// allowed: the record appended says so, and nothing may be released.
    #[error("{GATE_CLOSED_REASON}")]
    GateClosed {
        /// A revocation covers the caller (else the key or a version changed).
        revoked: bool,
    },
}

/// Why a release whose gate closed between the key service and the audit append is refused
/// (the status message, and the reason in its record).
pub const GATE_CLOSED_REASON: &str = "key state changed during the request";

/// What [`AuditLog::on_unhealthy`] calls: quick, and callable from any thread (not async).
pub type UnhealthyHook = std::sync::Arc<dyn Fn() + Send + Sync>;

/// A durable, append-only, totally ordered audit log.
#[async_trait::async_trait]
pub trait AuditLog: Send + Sync + std::fmt::Debug {
    /// Assigns `record` the next index and returns once it is durable.
    ///
    /// # Errors
    /// Any error means the record is not in the log, and the operation must be refused.
    async fn append(&self, record: AuditRecord) -> Result<u64, AuditError>;

    /// Number of durable records.
    fn size(&self) -> u64;

    /// False once the log cannot accept records (poisoned or closed).
    fn healthy(&self) -> bool;

    /// Calls `hook` once when the log stops accepting records (a write or fsync failed),
    /// before the first refusal is answered, so health flips in the same event that poisons
    /// the log. The default never calls it: such a log is seen by polling [`Self::healthy`].
    fn on_unhealthy(&self, hook: UnhealthyHook) {
        let _ = hook;
    }

    /// Size and RFC 6962 root of the published tree (what a checkpoint signs).
    fn head(&self) -> (u64, Hash);

    /// Up to `max` published records from index `from` (fewer at the end of the published
    /// log), as the exact bytes that are hashed. Blocking: reads files.
    ///
    /// # Errors
    /// Unreadable or damaged published data.
    fn read_published(&self, from: u64, max: usize) -> Result<Vec<Vec<u8>>, AuditError>;

    /// The published size, updated as the log grows. Sending never waits for receivers, so a
    /// slow reader cannot hold the writer back.
    fn published(&self) -> tokio::sync::watch::Receiver<u64>;

    /// RFC 6962 inclusion proof of `index` in the tree of `size` records; `None` unless
    /// `index < size <= ` the tree's size.
    fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>>;

    /// RFC 6962 consistency proof from `old` to `new` records; `None` unless
    /// `0 < old <= new <= ` the tree's size.
    fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>>;

    /// Appends the record of a release whose gate opened in the key service, with its
    /// `ticket`. Returns the record's index and the lease still to be written to the catalog
    /// (`None` when this log wrote it in its own transaction). The file log appends as
    /// [`AuditLog::append`] does; the PostgreSQL log checks the gate again in the transaction
    /// that appends the record, on the newest catalog data.
    ///
    /// # Errors
    /// As [`AuditLog::append`]; [`AuditError::GateClosed`] when the log's check found the
    /// release no longer allowed (the record appended then says it was refused).
    async fn append_release(
        &self,
        record: AuditRecord,
        ticket: crate::keys::leases::ReleaseTicket,
    ) -> Result<(u64, Option<crate::store::LeaseRecord>), AuditError> {
        let index = self.append(record).await?;
        Ok((index, ticket.lease))
    }

    /// A checkpoint of `size` records is now in the tiles directory: partial tiles of smaller
    /// sizes are no longer needed by its readers and may be removed.
    fn checkpoint_written(&self, size: u64) {
        let _ = size;
    }
}
