//! Offline verification of a C2SP tlog-tiles directory (height 8) against a signed checkpoint
//! (the layout, bundles and hashing are `keybroker_formats::tlog`'s, shared with the broker):
//! every entry bundle is re-hashed, every hash tile re-derived from the records up, and the
//! root recomputed; the first problem is reported with its record index and file.
//!
//! Reading is bounded: a bundle holds at most 256 records of at most 16 KiB, a tile at most 256
//! hashes, so no file larger than that is read.

use std::path::{Path, PathBuf};

use super::note::{Checkpoint, NoteError, VerifierKey, verify_checkpoint};
use super::proof::{Hash, RootBuilder, leaf_hash, node_hash};
use keybroker_formats::tlog::tiles::wider_partial;
pub use keybroker_formats::tlog::tiles::{
    MAX_RECORD_BYTES, TILE_WIDTH, bundle_path, index_path, parse_bundle, tile_path,
};

const MAX_BUNDLE_BYTES: u64 = TILE_WIDTH * (2 + MAX_RECORD_BYTES as u64);

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The checkpoint that was verified.
    pub checkpoint: Checkpoint,
    /// Hash tiles compared (entry bundles: one per level-0 tile).
    pub tiles: u64,
}

/// The first problem found in a tiles directory.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The checkpoint or its signature.
    #[error("{path}: {source}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        source: NoteError,
    },
    /// A file could not be read (missing: the log is truncated or incomplete).
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A file is larger than its kind can be.
    #[error("{path}: {len} bytes, more than a {kind} can hold")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
        /// Bundle or tile.
        kind: &'static str,
    },
    /// A record (or the bundle holding it) does not match what the checkpoint commits to.
    #[error("record {index} ({path}): {problem}")]
    Record {
        /// Index of the first bad record.
        index: u64,
        /// Its entry bundle.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A hash tile does not match the hashes re-derived from the records.
    #[error("{path}: hash {position} (covering records {first}..{end}) does not match the records")]
    Tile {
        /// The tile.
        path: PathBuf,
        /// Position of the first bad hash in the tile.
        position: u64,
        /// First record covered by that hash.
        first: u64,
        /// One past the last record covered.
        end: u64,
    },
    /// Every file matched, but the records lead to another root than the checkpoint's.
    #[error("the records hash to root {computed}, the checkpoint says {signed}")]
    Root {
        /// Hex root of the records.
        computed: String,
        /// Hex root in the checkpoint.
        signed: String,
    },
}

fn read_limited(path: &Path, limit: u64, kind: &'static str) -> Result<Vec<u8>, VerifyError> {
    let err = |source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(err)?.len();
    if len > limit {
        return Err(VerifyError::TooLarge {
            path: path.to_path_buf(),
            len,
            kind,
        });
    }
    std::fs::read(path).map_err(err)
}

/// The file standing in for the partial `own` (of `width` entries) when a log removed it: the
/// full file `full`, or the narrowest wider partial beside `own`. C2SP tlog-tiles lets a log
/// drop partial tiles no current checkpoint reads, and a reader use a wider one instead.
pub(super) fn stand_in(dir: &Path, full: &str, own: &Path, width: u64) -> Option<PathBuf> {
    let full = dir.join(full);
    if full.exists() {
        return Some(full);
    }
    let partials = own.parent()?;
    let present = std::fs::read_dir(partials)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok());
    wider_partial(width, present).map(|w| partials.join(w.to_string()))
}

/// Reads hash tile `(level, n)` of `width` hashes: the partial tile of that width, or else a
/// wider or the full tile, cut to `width` hashes.
fn read_tile(
    dir: &Path,
    level: u32,
    n: u64,
    width: u64,
) -> Result<(PathBuf, Vec<u8>), VerifyError> {
    let limit = TILE_WIDTH * 32;
    let path = dir.join(tile_path(level, n, width));
    match read_limited(&path, limit, "tile") {
        Err(VerifyError::Read { source, .. })
            if width < TILE_WIDTH && source.kind() == std::io::ErrorKind::NotFound =>
        {
            let missing = || VerifyError::Read {
                path: path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            };
            let other = stand_in(dir, &tile_path(level, n, TILE_WIDTH), &path, width)
                .ok_or_else(missing)?;
            let mut bytes = read_limited(&other, limit, "tile").map_err(|_| missing())?;
            bytes.truncate(usize::try_from(width * 32).unwrap_or(usize::MAX));
            Ok((other, bytes))
        }
        other => Ok((path, other?)),
    }
}

/// Compares a tile file with the hashes it must hold; the first difference is an error.
fn compare_tile(
    path: PathBuf,
    bytes: &[u8],
    want: &[Hash],
    level: u32,
    n: u64,
) -> Result<(), VerifyError> {
    let span = 1u64 << (8 * level);
    for (i, h) in want.iter().enumerate() {
        if bytes.get(i * 32..i * 32 + 32) != Some(h.as_slice()) {
            let first = (n * TILE_WIDTH + i as u64) * span;
            return Err(VerifyError::Tile {
                path,
                position: i as u64,
                first,
                end: first + span,
            });
        }
    }
    // A partial tile holds exactly its width; a full tile may stand in for a partial one.
    let full = bytes.len() as u64 == TILE_WIDTH * 32;
    if bytes.len() == want.len() * 32 || full {
        Ok(())
    } else {
        let first = (n * TILE_WIDTH + want.len() as u64) * span;
        Err(VerifyError::Tile {
            path,
            position: want.len() as u64,
            first,
            end: first + span,
        })
    }
}

/// The root of a complete tile's 256 hashes.
fn subtree(hashes: &[Hash]) -> Hash {
    let mut row = hashes.to_vec();
    while row.len() > 1 {
        row = row.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
    }
    row.first().copied().unwrap_or_default()
}

/// Verifies `<dir>/checkpoint` with `vkey`, then every record, bundle and tile it covers.
///
/// # Errors
/// The first problem, as a [`VerifyError`].
pub fn verify_dir(dir: &Path, vkey: &VerifierKey) -> Result<Verified, VerifyError> {
    let cp_path = dir.join("checkpoint");
    let note = read_limited(&cp_path, super::note::MAX_NOTE_BYTES as u64, "checkpoint")?;
    let note = String::from_utf8(note).map_err(|_| VerifyError::Checkpoint {
        path: cp_path.clone(),
        source: NoteError::Malformed("not UTF-8"),
    })?;
    let checkpoint = verify_checkpoint(vkey, &note).map_err(|source| VerifyError::Checkpoint {
        path: cp_path.clone(),
        source,
    })?;
    let size = checkpoint.size;
    let mut root = RootBuilder::default();
    let mut tiles = 0u64;
    // Level 0: records → leaf hashes, compared with tile/0; full tiles feed level 1.
    let mut above: Vec<Hash> = Vec::new();
    for n in 0..size.div_ceil(TILE_WIDTH) {
        let width = (size - n * TILE_WIDTH).min(TILE_WIDTH);
        let own = dir.join(bundle_path(n, width));
        let first = n * TILE_WIDTH;
        // A removed partial bundle: a wider or the full one holds the same first records.
        let (path, wider) = match stand_in(dir, &bundle_path(n, TILE_WIDTH), &own, width) {
            Some(other) if width < TILE_WIDTH && !own.exists() => (other, true),
            _ => (own, false),
        };
        let bytes = match read_limited(&path, MAX_BUNDLE_BYTES, "bundle") {
            Err(VerifyError::Read { source, .. }) => {
                return Err(VerifyError::Record {
                    index: first,
                    path,
                    problem: format!("entry bundle missing or unreadable ({source})"),
                });
            }
            other => other?,
        };
        let mut records = parse_bundle(&bytes).ok_or_else(|| VerifyError::Record {
            index: first,
            path: path.clone(),
            problem: "entry bundle is cut short".to_owned(),
        })?;
        if wider && records.len() as u64 > width {
            records.truncate(usize::try_from(width).unwrap_or(usize::MAX));
        }
        if records.len() as u64 != width {
            let index = first + (records.len() as u64).min(width);
            return Err(VerifyError::Record {
                index,
                path,
                problem: format!(
                    "entry bundle holds {} records, the checkpoint needs {width}",
                    records.len()
                ),
            });
        }
        let mut leaves = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            let index = first + i as u64;
            check_record(record, index).map_err(|problem| VerifyError::Record {
                index,
                path: path.clone(),
                problem,
            })?;
            let h = leaf_hash(record);
            root.push(h);
            leaves.push(h);
        }
        let (tile, tile_bytes) = read_tile(dir, 0, n, width)?;
        if let Err(VerifyError::Tile { position, .. }) =
            compare_tile(tile.clone(), &tile_bytes, &leaves, 0, n)
        {
            // The tile disagrees with the records: say which record.
            return Err(VerifyError::Record {
                index: first + position,
                path,
                problem: format!(
                    "its hash does not match {} (record or tile altered)",
                    tile.display()
                ),
            });
        }
        tiles += 1;
        if width == TILE_WIDTH {
            above.push(subtree(&leaves));
        }
    }
    // Levels 1..: each from the complete subtrees of the level below.
    let mut level = 1u32;
    while !above.is_empty() {
        let mut next = Vec::new();
        let count = above.len() as u64;
        for n in 0..count.div_ceil(TILE_WIDTH) {
            let start = usize::try_from(n * TILE_WIDTH).unwrap_or(usize::MAX);
            let width = (count - n * TILE_WIDTH).min(TILE_WIDTH);
            let end = start + usize::try_from(width).unwrap_or(0);
            let want = &above[start..end];
            let (path, bytes) = read_tile(dir, level, n, width)?;
            compare_tile(path, &bytes, want, level, n)?;
            tiles += 1;
            if width == TILE_WIDTH {
                next.push(subtree(want));
            }
        }
        above = next;
        level += 1;
    }
    let computed = root.root();
    if computed != checkpoint.root {
        return Err(VerifyError::Root {
            computed: hex::encode(computed),
            signed: hex::encode(checkpoint.root),
        });
    }
    Ok(Verified { checkpoint, tiles })
}

/// A record must be a JSON object whose `index` is its position.
fn check_record(record: &[u8], index: u64) -> Result<(), String> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(format!("{} bytes, more than 16 KiB", record.len()));
    }
    let value: serde_json::Value =
        serde_json::from_slice(record).map_err(|e| format!("not JSON: {e}"))?;
    match value.get("index").and_then(serde_json::Value::as_u64) {
        Some(i) if i == index => Ok(()),
        Some(i) => Err(format!("says it is record {i}")),
        None => Err("has no index".to_owned()),
    }
}
