//! Start-up of a replica's mirror without reading the whole log from PostgreSQL.
//!
//! The writer needs nothing from the log at start: each transaction reads the frontier and root
//! from the `audit_head` row. The mirror (tiles for auditors, the tree for proofs) resumes from
//! the whole bundles already in its tiles directory — their leaf hashes, 32 bytes per record,
//! read from the level-0 tiles — and reads from the database only the entries after them (the
//! open bundle and whatever was appended while the replica was down). The result must have the
//! root the head row holds; a directory that disagrees (another database's, or one restored from
//! an older backup) stops the start rather than mirroring a different log.

use std::path::Path;

use sqlx::PgPool;

use super::follow::{PAGE, read_from};
use crate::audit::AuditError;
use crate::audit::tiles::{self, Publisher};
use keybroker_formats::tlog::Hash;

/// The size and root of the log in the database.
async fn head(pool: &PgPool) -> Result<(u64, Hash), AuditError> {
    let (size, root): (i64, Vec<u8>) =
        sqlx::query_as("SELECT size, root FROM audit_head WHERE id = 1")
            .fetch_one(pool)
            .await
            .map_err(|e| AuditError::Database(e.to_string()))?;
    let size = u64::try_from(size)
        .map_err(|_| AuditError::Database("audit_head.size is negative".to_owned()))?;
    let root = Hash::try_from(root.as_slice())
        .map_err(|_| AuditError::Database("audit_head.root is not 32 bytes".to_owned()))?;
    Ok((size, root))
}

/// The mirror in `dir`, brought up to the database's head and checked against its root.
///
/// # Errors
/// The database cannot be read or has a gap; the directory does not match the database.
pub(super) async fn mirror(pool: &PgPool, dir: &Path) -> Result<Publisher, AuditError> {
    let (size, root) = head(pool).await?;
    let on_disk = dir.to_path_buf();
    let leaves = blocking(dir, move || tiles::full_leaves(&on_disk)).await?;
    if leaves.len() as u64 > size {
        return Err(mismatch(
            dir,
            format!("it holds {} records, the database {size}", leaves.len()),
        ));
    }
    let start = dir.to_path_buf();
    let mut publisher = blocking(dir, move || Publisher::resume(&start, leaves)).await?;
    let resumed = publisher.head().0;
    while publisher.head().0 < size {
        let from = publisher.head().0;
        let want = i64::try_from(size - from).unwrap_or(i64::MAX).min(PAGE);
        let page = read_from(pool, from, Some(want)).await?;
        if page.is_empty() {
            return Err(AuditError::Database(format!(
                "audit_entries ends at {from}, audit_head.size is {size}"
            )));
        }
        publisher = blocking(dir, move || {
            publisher.extend(page);
            publisher
        })
        .await?;
    }
    if publisher.head() != (size, root) {
        return Err(mismatch(
            dir,
            format!("its tree of {size} records does not have the database's root"),
        ));
    }
    tracing::info!(
        size,
        from_disk = resumed,
        from_database = size - resumed,
        "audit mirror resumed"
    );
    Ok(publisher)
}

fn mismatch(dir: &Path, problem: String) -> AuditError {
    AuditError::Corrupt {
        path: dir.to_path_buf(),
        problem: format!(
            "the tiles directory is not a mirror of this database's log ({problem}): another \
             database's directory, or a database restored from an older backup; keep the \
             directory for investigation, give this replica an empty one and restart"
        ),
    }
}

async fn blocking<T: Send + 'static>(
    dir: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuditError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuditError::Io {
            what: "mirror",
            path: dir.to_path_buf(),
            source: std::io::Error::other(e),
        })
}
