//! Offline rollback check: a tiles directory that verified against its own checkpoint is also
//! checked against checkpoints the auditor kept from earlier (`audit verify --old-checkpoint`).
//! An older, validly signed checkpoint put back in the directory verifies on its own; only a
//! checkpoint kept from before shows the log went backwards or was rewritten.
//!
//! Each old checkpoint must be signed by the same key, be no larger than the directory's, and
//! its root must be the RFC 6962 root of the directory's first N records (N its size).

use std::path::{Path, PathBuf};

use super::note::{Checkpoint, NoteError, VerifierKey, verify_checkpoint};
use super::proof::{RootBuilder, leaf_hash};
use super::tiles::{TILE_WIDTH, bundle_path, parse_bundle, stand_in};

/// Largest checkpoint file read.
const MAX_NOTE_FILE: u64 = 64 * 1024;
/// Largest entry bundle read (256 records of at most 16 KiB, with length prefixes).
const MAX_BUNDLE_FILE: u64 = TILE_WIDTH * (2 + 16 * 1024);

/// Why an old checkpoint does not fit the directory.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The old checkpoint is not a checkpoint of this log signed by this key.
    #[error("{path}: {source}")]
    Note {
        /// The old checkpoint file.
        path: PathBuf,
        /// What is wrong.
        source: NoteError,
    },
    /// The directory's checkpoint is smaller than one kept earlier: the log was rolled back.
    #[error(
        "{path}: the directory's checkpoint has {current} records, fewer than the {old} of this \
         older checkpoint: the log was rolled back"
    )]
    Smaller {
        /// The old checkpoint file.
        path: PathBuf,
        /// Its size.
        old: u64,
        /// The directory's size.
        current: u64,
    },
    /// The first N records do not hash to the old checkpoint's root.
    #[error(
        "{path}: the first {size} records of the directory hash to {computed}, this older \
         checkpoint says {signed}: the log was rewritten"
    )]
    Rewritten {
        /// The old checkpoint file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Hex root of the directory's first `size` records.
        computed: String,
        /// Hex root of the old checkpoint.
        signed: String,
    },
    /// An entry bundle the check needs is missing or damaged (`verify_dir` would have said so
    /// first; this is a directory changed in between).
    #[error("{path}: entry bundle missing or damaged")]
    Bundle {
        /// The bundle.
        path: PathBuf,
    },
}

fn read(path: &Path, limit: u64) -> Result<Vec<u8>, RollbackError> {
    let err = |source| RollbackError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(err)?.len();
    if len > limit {
        return Err(RollbackError::Bundle {
            path: path.to_path_buf(),
        });
    }
    std::fs::read(path).map_err(err)
}

/// Checks the checkpoint in `old` against the directory `dir`, whose own checkpoint
/// `current` was verified (every record, tile and its root) with `vkey`. Returns the old
/// checkpoint.
///
/// # Errors
/// A [`RollbackError`] saying what does not fit.
pub fn check_old_checkpoint(
    dir: &Path,
    current: &Checkpoint,
    old: &Path,
    vkey: &VerifierKey,
) -> Result<Checkpoint, RollbackError> {
    let note = read(old, MAX_NOTE_FILE)?;
    let note_err = |source| RollbackError::Note {
        path: old.to_path_buf(),
        source,
    };
    let note = String::from_utf8(note).map_err(|_| note_err(NoteError::Malformed("not UTF-8")))?;
    let cp = verify_checkpoint(vkey, &note).map_err(note_err)?;
    if cp.size > current.size {
        return Err(RollbackError::Smaller {
            path: old.to_path_buf(),
            old: cp.size,
            current: current.size,
        });
    }
    let computed = prefix_root(dir, current.size, cp.size)?;
    if computed.root() != cp.root {
        return Err(RollbackError::Rewritten {
            path: old.to_path_buf(),
            size: cp.size,
            computed: hex::encode(computed.root()),
            signed: hex::encode(cp.root),
        });
    }
    Ok(cp)
}

/// The root of the first `size` records of the log of `total` records in `dir`, read from
/// the entry bundles of the `total`-record tree (those `verify_dir` checked).
fn prefix_root(dir: &Path, total: u64, size: u64) -> Result<RootBuilder, RollbackError> {
    let mut root = RootBuilder::default();
    for n in 0..size.div_ceil(TILE_WIDTH) {
        let width = (total - n * TILE_WIDTH).min(TILE_WIDTH);
        let own = dir.join(bundle_path(n, width));
        // A partial bundle the log removed: a wider or the full one holds the same records.
        let path = match stand_in(dir, &bundle_path(n, TILE_WIDTH), &own, width) {
            Some(other) if width < TILE_WIDTH && !own.exists() => other,
            _ => own,
        };
        let bytes = read(&path, MAX_BUNDLE_FILE)?;
        let records = parse_bundle(&bytes).ok_or(RollbackError::Bundle { path: path.clone() })?;
        let wanted = usize::try_from((size - n * TILE_WIDTH).min(TILE_WIDTH)).unwrap_or(0);
        if records.len() < wanted {
            return Err(RollbackError::Bundle { path });
        }
        for record in &records[..wanted] {
            root.push(leaf_hash(record));
        }
    }
    Ok(root)
}

/// Whether `dir` holds entry bundles beyond the `size` records its checkpoint covers: records
/// no signature vouches for (a checkpoint put back from earlier, or one not yet published).
#[must_use]
pub fn entries_beyond(dir: &Path, size: u64) -> bool {
    let exists = |n: u64, width: u64| dir.join(bundle_path(n, width)).exists();
    let (last, used) = (size / TILE_WIDTH, size % TILE_WIDTH);
    // A wider version of the last bundle, or any bundle after it.
    ((used + 1)..=TILE_WIDTH).any(|w| exists(last, w))
        || (1..=TILE_WIDTH).any(|w| exists(last + 1, w))
}
