//! The newest checkpoint, shared through PostgreSQL: the publisher stores each one it signs in
//! `audit_checkpoint` (the checkpoint task's [`Sink::Database`], in `checkpoint.rs`, so that
//! room does not import this one); every replica's mirror copies the newest into its own tiles directory
//! (with the partial tiles it reads) and serves it, once the mirror holds the records it covers.
//! So every replica answers `GetCheckpoint` with the newest checkpoint and every replica's
//! directory verifies, whichever replica signs.

use std::path::Path;

use base64::Engine as _;
use sqlx::PgPool;

use crate::audit::AuditError;
#[cfg(doc)]
use crate::audit::checkpoint::Sink;
use crate::audit::checkpoint::{self, Latest, Signed, Signer};
use crate::audit::tiles::Publisher;
use keybroker_formats::tlog::Hash;

/// The newest stored checkpoint.
async fn newest(db: &PgPool) -> Result<Option<(u64, String)>, AuditError> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT size, note FROM audit_checkpoint WHERE id = 1")
            .fetch_optional(db)
            .await
            .map_err(|e| AuditError::Database(e.to_string()))?;
    Ok(row.and_then(|(s, n)| Some((u64::try_from(s).ok()?, n))))
}

/// What a replica does with the shared checkpoints.
#[derive(Debug, Clone)]
pub(crate) struct Copier {
    pub(crate) signer: Signer,
    pub(crate) latest: Latest,
    /// Size of the checkpoint last copied.
    pub(crate) copied: Option<u64>,
}

/// Whether `note` is `signer`'s checkpoint of a tree of `size` records with root `root`.
fn is_ours(signer: &Signer, note: &str, size: u64, root: &Hash) -> bool {
    let body = checkpoint::body(signer.origin(), size, root);
    let Some(sig_line) = note
        .strip_prefix(body.as_str())
        .and_then(|rest| rest.strip_prefix('\n'))
        .and_then(|rest| rest.strip_prefix(&format!("\u{2014} {} ", signer.origin())))
        .and_then(|rest| rest.strip_suffix('\n'))
    else {
        return false;
    };
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(sig_line) else {
        return false;
    };
    sig.len() == 68 && signer.verifies(body.as_bytes(), sig.get(4..).unwrap_or_default())
}

impl Copier {
    /// Copies the newest stored checkpoint into `publisher`'s directory and `latest`, if it is
    /// new and the mirror covers it. A checkpoint that is not the log's key's signature of the
    /// mirror's own root is refused loudly and never served.
    pub(crate) async fn step(
        &mut self,
        db: &PgPool,
        publisher: Publisher,
    ) -> Result<Publisher, (AuditError, Option<Publisher>)> {
        let (size, note) = match newest(db).await {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(publisher),
            Err(e) => return Err((e, Some(publisher))),
        };
        if self.copied.is_some_and(|c| c >= size) || size > publisher.head().0 {
            return Ok(publisher);
        }
        let Some(root) = crate::audit::tiles::read(&publisher.tree()).root_at(size) else {
            return Ok(publisher);
        };
        if !is_ours(&self.signer, &note, size, &root) {
            return Err((
                AuditError::Corrupt {
                    path: publisher.dir().to_path_buf(),
                    problem: format!(
                        "the stored checkpoint of {size} records is not this log's key's \
                         signature of this mirror's root; not served"
                    ),
                },
                Some(publisher),
            ));
        }
        let text = note.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut publisher = publisher;
            let written = publisher
                .materialize(size)
                .and_then(|()| checkpoint::write_note(publisher.dir(), &text));
            if written.is_ok() {
                publisher
                    .pin()
                    .fetch_max(size, std::sync::atomic::Ordering::SeqCst);
                publisher.prune();
            }
            (publisher, written)
        })
        .await;
        let (publisher, written) = match joined {
            Ok(r) => r,
            Err(e) => {
                return Err((
                    AuditError::Io {
                        what: "copy the checkpoint into",
                        path: Path::new("audit.dir").to_path_buf(),
                        source: std::io::Error::other(e),
                    },
                    None,
                ));
            }
        };
        if let Err(e) = written {
            return Err((e, Some(publisher)));
        }
        self.latest.set(Signed {
            note,
            origin: self.signer.origin().to_owned(),
            size,
            root,
            vkey: self.signer.vkey(),
        });
        self.copied = Some(size);
        Ok(publisher)
    }
}
