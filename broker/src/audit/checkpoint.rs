//! Checkpoints: a C2SP tlog-checkpoint body (origin, tree size, base64 root) signed as a C2SP
//! signed-note by the log's one Ed25519 key in the HSM ([`Signer`]). Signed at least once per
//! second while the log grows, and once more on shutdown. A single node writes it to
//! `<dir>/checkpoint`; replicas store it in PostgreSQL, and every replica copies the newest into
//! its own directory. The verifier key (C2SP `vkey`) is written to `<dir>/checkpoint.vkey`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

use super::merkle::Hash;
use super::{AuditError, AuditLog};

pub use super::signer::{KEY_LABEL, KeyError, Signer};
/// Signature type byte of Ed25519 in C2SP signed-note.
const ED25519_TYPE: u8 = 0x01;
/// How often a growing log is checkpointed.
pub const EVERY: Duration = Duration::from_secs(1);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The checkpoint body: `origin\nsize\nbase64(root)\n`.
#[must_use]
pub fn body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", b64(root))
}

/// The signed-note key id: the first 4 bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key).
#[must_use]
pub fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ED25519_TYPE]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The verifier key: `name+hex(key id)+base64(0x01 ‖ public key)`.
#[must_use]
pub fn vkey(name: &str, public: &[u8; 32]) -> String {
    let mut typed = vec![ED25519_TYPE];
    typed.extend_from_slice(public);
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, public)),
        b64(&typed)
    )
}

/// A signed note: the body, an empty line, and one signature line.
#[must_use]
pub fn note(body: &str, name: &str, key_id: [u8; 4], signature: &[u8; 64]) -> String {
    let mut sig = key_id.to_vec();
    sig.extend_from_slice(signature);
    format!("{body}\n\u{2014} {name} {}\n", b64(&sig))
}

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
        Sink::Database(db) => super::pg::store_checkpoint(db, size, &text).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn note_format_follows_c2sp() {
        let root = [0u8; 32];
        assert_eq!(
            body("example.com/log", 5, &root),
            "example.com/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
        );
        let public = [7u8; 32];
        let v = vkey("example.com/log", &public);
        let parts: Vec<&str> = v.splitn(3, '+').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].len(), 8);
        let n = note("b\n", "example.com/log", [1, 2, 3, 4], &[9; 64]);
        assert!(n.starts_with("b\n\n\u{2014} example.com/log "));
        assert!(n.ends_with('\n'));
    }
}
