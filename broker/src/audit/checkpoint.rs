//! Checkpoints: a C2SP tlog-checkpoint body (origin, tree size, base64 root) signed as a C2SP
//! signed-note by the log's one Ed25519 key in the HSM ([`Signer`]). Signed at least once per
//! second while the log grows, and once more on shutdown. A single node writes it to
//! `<dir>/checkpoint`; replicas store it in PostgreSQL, and every replica copies the newest into
//! its own directory. The verifier key (C2SP `vkey`) is written to `<dir>/checkpoint.vkey`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{AuditError, AuditLog};
use keybroker_formats::tlog::Hash;

pub use super::signer::{KEY_LABEL, KeyError, Signer};
/// The note format (shared with the auditors' verifier, in the formats crate).
pub use keybroker_formats::tlog::note::{body, key_id, note, vkey};
/// How often a growing log is checkpointed.
pub const EVERY: Duration = Duration::from_secs(1);

/// A signed checkpoint and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The signed note text, as written to `<dir>/checkpoint`.
    pub note: String,
    /// Its origin line (also the key name).
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// RFC 6962 root of the first `size` records.
    pub root: Hash,
    /// The verifier key of the signer.
    pub vkey: String,
}

/// The newest signed checkpoint, shared between the checkpoint task and the Audit service.
#[derive(Debug, Clone, Default)]
pub struct Latest(Arc<std::sync::RwLock<Option<Signed>>>);

impl Latest {
    /// The newest checkpoint, if one was signed yet.
    #[must_use]
    pub fn get(&self) -> Option<Signed> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the newest checkpoint, unless the one held is larger (a replica's mirror and
    /// the publisher may race; checkpoints never go back).
    pub(crate) fn set(&self, signed: Signed) {
        let mut held = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.as_ref().is_none_or(|h| h.size <= signed.size) {
            *held = Some(signed);
        }
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<(), AuditError> {
    let tmp = path.with_extension("tmp");
    let io = |what, p: &Path| {
        let p: PathBuf = p.to_path_buf();
        move |source| AuditError::Io {
            what,
            path: p,
            source,
        }
    };
    std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

/// Where signed checkpoints go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Single node: `<dir>/checkpoint` and the shared [`Latest`]; the log is then told, so it
    /// may drop partial tiles older than the checkpoint.
    Dir(PathBuf),
    /// Replicas: the database's `audit_checkpoint` row. Every replica's mirror copies the
    /// newest one into its own directory and [`Latest`] once it holds the records it covers.
    Database(sqlx::PgPool),
}

/// Writes `<dir>/checkpoint.vkey` (logged, not fatal: auditors pin the key out of band).
pub(crate) fn write_vkey(dir: &Path, signer: &Signer) {
    if let Err(e) = write_atomic(
        &dir.join("checkpoint.vkey"),
        &format!("{}\n", signer.vkey()),
    ) {
        tracing::warn!(error = %e, "audit verifier key not written");
    }
}

/// Writes a verified checkpoint note of `size` records into `dir`.
///
/// # Errors
/// I/O failures.
pub(crate) fn write_note(dir: &Path, text: &str) -> Result<(), AuditError> {
    write_atomic(&dir.join("checkpoint"), text)
}

/// Stores a checkpoint of `size` records unless a larger one is stored, and wakes the mirrors.
///
/// # Errors
/// The database refused.
pub async fn store_checkpoint(db: &sqlx::PgPool, size: u64, note: &str) -> Result<(), AuditError> {
    let size = i64::try_from(size).map_err(|_| AuditError::Database("size overflow".into()))?;
    sqlx::query(
        "WITH up AS (INSERT INTO audit_checkpoint (id, size, note) VALUES (1, $1, $2) \
         ON CONFLICT (id) DO UPDATE SET size = EXCLUDED.size, note = EXCLUDED.note \
         WHERE audit_checkpoint.size <= EXCLUDED.size RETURNING 1) \
         SELECT pg_notify('keybroker_audit', 'checkpoint') FROM up",
    )
    .bind(size)
    .bind(note)
    .fetch_all(db)
    .await
    .map(drop)
    .map_err(|e| AuditError::Database(e.to_string()))
}

async fn publish(signer: &Signer, log: &dyn AuditLog, sink: &Sink, latest: &Latest) -> Option<u64> {
    let (size, root) = log.head();
    let text = match signer.sign(size, &root).await {
        Ok(text) => text,
        Err(e) => {
            tracing::warn!(error = %e, "audit checkpoint not signed");
            return None;
        }
    };
    let stored = match sink {
        Sink::Dir(dir) => write_note(dir, &text).map(|()| {
            latest.set(Signed {
                note: text,
                origin: signer.origin().to_owned(),
                size,
                root,
                vkey: signer.vkey(),
            });
            log.checkpoint_written(size);
        }),
        Sink::Database(db) => store_checkpoint(db, size, &text).await,
    };
    match stored {
        Ok(()) => Some(size),
        Err(e) => {
            tracing::warn!(error = %e, "audit checkpoint not written");
            None
        }
    }
}

/// Signs a checkpoint whenever the log grew, at most every [`EVERY`], and once more when
/// `cancel` fires (after the server stopped taking requests), and hands each to `sink`.
pub async fn run(
    signer: Signer,
    log: Arc<dyn AuditLog>,
    sink: Sink,
    latest: Latest,
    cancel: CancellationToken,
) {
    if let Sink::Dir(dir) = &sink {
        write_vkey(dir, &signer);
    }
    let mut last = publish(&signer, log.as_ref(), &sink, &latest).await;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if last != Some(log.head().0) {
            last = publish(&signer, log.as_ref(), &sink, &latest)
                .await
                .or(last);
        }
    }
    // The final checkpoint covers every durable record: wait (bounded) for the tiles to catch up.
    for _ in 0..100 {
        if log.head().0 >= log.size() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(&signer, log.as_ref(), &sink, &latest).await;
}
