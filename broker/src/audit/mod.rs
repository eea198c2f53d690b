//! The audit log (DESIGN §6): one typed record per key operation, granted or denied, made
//! durable before any key material leaves. Fail closed: a record that cannot be made durable
//! refuses the operation, and after a write or fsync error the log refuses everything until
//! restart.
//!
//! [`AuditLog`] is the seam: the embedded [`FileAuditLog`] (segment files, group commit) today,
//! a PostgreSQL-sequenced log for several replicas later.

pub mod checkpoint;
mod log;
pub mod merkle;
pub mod record;
mod segment;
pub mod tiles;

use std::path::PathBuf;

pub use log::FileAuditLog;
pub use record::{AuditPrincipal, AuditRecord, Decision, Op, Outcome, Surface};

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
    /// The writer has stopped (shutdown).
    #[error("audit log is closed")]
    Closed,
}

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

    /// Size and RFC 6962 root of the published tree (what a checkpoint signs).
    fn head(&self) -> (u64, merkle::Hash);
}
