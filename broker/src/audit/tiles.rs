//! The C2SP tlog-tiles static layout (height 8): hash tiles `tile/<L>/<N>[.p/<W>]` and entry
//! bundles `tile/entries/<N>[.p/<W>]`, written next to the segment log for auditors.
//!
//! Level `L` tile `N` holds the hashes of tree level `8·L`, indices `256·N ..`; a bundle holds
//! the records themselves, each prefixed by its big-endian `u16` length. Full tiles are written
//! once and never rewritten; partial ones are written as the log grows and removed once no
//! checkpoint reader needs them (`partials`). Tiles are derived data (rebuilt from the
//! segments), so they are written atomically (temp + rename) but not fsynced.

mod partials;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use partials::Partials;

use super::AuditError;
use keybroker_formats::tlog::{Hash, Tree};

// The C2SP layout and bundle encoding are shared with the offline verifier (in the formats
// crate), so writer and verifier cannot disagree on where a tile lives or what it holds.
pub use keybroker_formats::tlog::tiles::{
    TILE_WIDTH, bundle_bytes, bundle_path, index_path, parse_bundle, tile_path,
};

/// Writes every tile and bundle that changed when the tree grew from `old_size` to its current
/// size. `entries[i]` is the record at index `entries_start + i`; it must cover the records from
/// the start of the bundle holding `old_size`.
///
/// Returns the partial files it wrote (paths relative to `dir`).
///
/// # Errors
/// I/O failures, or [`AuditError::Corrupt`] if `entries` does not cover what is needed.
pub fn write_new(
    dir: &Path,
    tree: &Tree,
    entries_start: u64,
    entries: &[Vec<u8>],
    old_size: u64,
) -> Result<Vec<String>, AuditError> {
    let mut partial = Vec::new();
    let new_size = tree.size();
    for level in 0u32.. {
        let shift = 8 * level;
        if shift >= 64 || new_size >> shift == 0 {
            break;
        }
        let (count_old, count_new) = (old_size >> shift, new_size >> shift);
        if count_new == count_old {
            continue;
        }
        let hashes = tree.level(shift as usize);
        for n in count_old / TILE_WIDTH..count_new.div_ceil(TILE_WIDTH) {
            let start = n * TILE_WIDTH;
            let width = (count_new - start).min(TILE_WIDTH);
            let path = dir.join(tile_path(level, n, width));
            // A crash between a full tile and its bundle leaves only the tile: write both.
            let complete = path.exists() && (level > 0 || dir.join(bundle_path(n, width)).exists());
            if width == TILE_WIDTH && complete {
                continue;
            }
            let bytes: Vec<u8> = slice(hashes, start, width, dir)?.concat();
            write_atomic(&path, &bytes)?;
            if width < TILE_WIDTH {
                partial.push(tile_path(level, n, width));
            }
            if level == 0 {
                let first = start.checked_sub(entries_start).ok_or_else(|| short(dir))?;
                let records = slice(entries, first, width, dir)?;
                let bundle = bundle_bytes(records.iter().map(Vec::as_slice));
                write_atomic(&dir.join(bundle_path(n, width)), &bundle)?;
                if width < TILE_WIDTH {
                    partial.push(bundle_path(n, width));
                }
            }
        }
    }
    Ok(partial)
}

/// Keeps the Merkle tree and the tiles directory in step with the log: the records of the open
/// bundle in memory, everything else on disk.
#[derive(Debug)]
pub(crate) struct Publisher {
    dir: PathBuf,
    /// Shared with proof readers; only this publisher writes it.
    tree: Arc<RwLock<Tree>>,
    bundle_start: u64,
    bundle: Vec<Vec<u8>>,
    partials: Partials,
}

impl Publisher {
    /// Rebuilds the tree from every record and repairs missing tiles (a crash between a commit
    /// and its tiles). Tile errors are logged, not fatal: tiles are derived from the segments.
    pub(crate) fn rebuild(dir: &Path, records: Vec<Vec<u8>>) -> Self {
        let mut tree = Tree::default();
        for r in &records {
            tree.push_record(r);
        }
        if let Err(e) = write_new(dir, &tree, 0, &records, 0) {
            tracing::warn!(error = %e, "audit tiles: repair failed");
        }
        let partials = start_partials(dir, &[tree.size()]);
        let bundle_start = tree.size() / TILE_WIDTH * TILE_WIDTH;
        let keep = usize::try_from(bundle_start).unwrap_or(usize::MAX);
        let bundle = records.into_iter().skip(keep).collect();
        Self {
            dir: dir.to_path_buf(),
            tree: Arc::new(RwLock::new(tree)),
            bundle_start,
            bundle,
            partials,
        }
    }

    /// Continues a mirror whose first `leaves.len()` records are on disk already, in whole
    /// bundles (see [`full_leaves`]): the tree from their leaf hashes, no record in memory.
    pub(crate) fn resume(dir: &Path, leaves: Vec<Hash>) -> Self {
        let mut tree = Tree::default();
        let whole = leaves.len() / TILE_WIDTH as usize * TILE_WIDTH as usize;
        for leaf in leaves.into_iter().take(whole) {
            tree.push(leaf);
        }
        Self {
            dir: dir.to_path_buf(),
            bundle_start: tree.size(),
            tree: Arc::new(RwLock::new(tree)),
            bundle: Vec::new(),
            partials: start_partials(dir, &[]),
        }
    }

    /// Appends durable records and writes the tiles that changed.
    pub(crate) fn extend(&mut self, records: Vec<Vec<u8>>) {
        let (old, new) = {
            let mut tree = write(&self.tree);
            let old = tree.size();
            for r in records {
                tree.push_record(&r);
                self.bundle.push(r);
            }
            (old, tree.size())
        };
        // Readers (proofs) only read the tree: they may run while the files are written.
        let tree = read(&self.tree);
        match write_new(&self.dir, &tree, self.bundle_start, &self.bundle, old) {
            Ok(paths) => self.partials.wrote(new, paths),
            Err(e) => tracing::warn!(error = %e, "audit tiles: write failed"),
        }
        drop(tree);
        self.partials.prune(&self.dir, new);
        // Records of bundles that are now full are on disk; keep only the open bundle.
        let new_start = new / TILE_WIDTH * TILE_WIDTH;
        if new_start > self.bundle_start {
            let done = usize::try_from(new_start - self.bundle_start).unwrap_or(usize::MAX);
            self.bundle.drain(..done.min(self.bundle.len()));
            self.bundle_start = new_start;
        }
    }

    /// The handle through which whoever writes `<dir>/checkpoint` reports its size (older
    /// partial tiles are then removed at the next growth).
    pub(crate) fn pin(&self) -> Arc<AtomicU64> {
        self.partials.pin()
    }

    /// Removes the partial tiles that neither the pinned checkpoint nor the tree's size reads
    /// (also done after each growth; call it after pinning a new checkpoint).
    pub(crate) fn prune(&mut self) {
        let head = read(&self.tree).size();
        self.partials.prune(&self.dir, head);
    }

    /// Writes the partial tiles and bundle a reader of a checkpoint of `size` records needs,
    /// where missing (a mirror that grew past `size` in one step never wrote them).
    ///
    /// # Errors
    /// I/O failures; `size` beyond the tree, or records no longer at hand.
    pub(crate) fn materialize(&mut self, size: u64) -> Result<(), AuditError> {
        let tree = read(&self.tree);
        if size > tree.size() {
            return Err(short(&self.dir));
        }
        let mut wrote = Vec::new();
        for path in partials::needed(size) {
            let full = self.dir.join(&path);
            if full.exists() {
                wrote.push(path);
                continue;
            }
            let bytes = if path.starts_with("tile/entries/") {
                let n = size / TILE_WIDTH;
                let width = size % TILE_WIDTH;
                let start = n * TILE_WIDTH;
                if start >= self.bundle_start {
                    let first = start - self.bundle_start;
                    let records = slice(&self.bundle, first, width, &self.dir)?;
                    bundle_bytes(records.iter().map(Vec::as_slice))
                } else {
                    let all = read_bundle(&self.dir, n, TILE_WIDTH)?;
                    let records = slice(&all, 0, width, &self.dir)?;
                    bundle_bytes(records.iter().map(Vec::as_slice))
                }
            } else {
                let level = path
                    .strip_prefix("tile/")
                    .and_then(|p| p.split('/').next())
                    .and_then(|l| l.parse::<u32>().ok())
                    .ok_or_else(|| short(&self.dir))?;
                let count = size >> (8 * level);
                let start = count / TILE_WIDTH * TILE_WIDTH;
                slice(
                    tree.level(8 * level as usize),
                    start,
                    count - start,
                    &self.dir,
                )?
                .concat()
            };
            write_atomic(&full, &bytes)?;
            wrote.push(path);
        }
        drop(tree);
        self.partials.wrote(size, wrote);
        Ok(())
    }

    /// Size and root hash of the tree.
    pub(crate) fn head(&self) -> (u64, Hash) {
        let tree = read(&self.tree);
        (tree.size(), tree.root())
    }

    /// The tiles directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tree, for proofs.
    pub(crate) fn tree(&self) -> Arc<RwLock<Tree>> {
        self.tree.clone()
    }
}

/// The leaf hashes of the whole bundles in `dir`, from index 0: full level-0 tiles `0, 1, …`
/// as long as each is readable and has its entry bundle (a crash may leave a tile without its
/// bundle). 32 bytes per record; the records themselves are not read.
pub(crate) fn full_leaves(dir: &Path) -> Vec<Hash> {
    let mut out = Vec::new();
    for n in 0u64.. {
        if !dir.join(bundle_path(n, TILE_WIDTH)).exists() {
            break;
        }
        let path = dir.join(tile_path(0, n, TILE_WIDTH));
        // Size first: a stray large file is not read into memory.
        if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(32 * TILE_WIDTH) {
            break;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            break;
        };
        if bytes.len() as u64 != 32 * TILE_WIDTH {
            break;
        }
        out.extend(
            bytes
                .chunks_exact(32)
                .filter_map(|c| Hash::try_from(c).ok()),
        );
    }
    out
}

/// Read access to a shared tree (a panicked writer leaves it usable: pushes are atomic enough
/// for readers, who only ask about sizes the head already reported).
pub(crate) fn read(tree: &RwLock<Tree>) -> std::sync::RwLockReadGuard<'_, Tree> {
    tree.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(tree: &RwLock<Tree>) -> std::sync::RwLockWriteGuard<'_, Tree> {
    tree.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Up to `max` records from index `from`, read from the entry bundles of a tree of `size`
/// records (the published size: its bundles are on disk).
///
/// # Errors
/// An unreadable bundle, or [`AuditError::Corrupt`] for one that does not hold what the size
/// says it must.
pub fn read_entries(
    dir: &Path,
    size: u64,
    from: u64,
    max: usize,
) -> Result<Vec<Vec<u8>>, AuditError> {
    let mut out = Vec::new();
    let mut next = from;
    while next < size && out.len() < max {
        let n = next / TILE_WIDTH;
        let width = (size - n * TILE_WIDTH).min(TILE_WIDTH);
        let records = read_bundle(dir, n, width)?;
        let skip = usize::try_from(next - n * TILE_WIDTH).unwrap_or(usize::MAX);
        for r in records.into_iter().skip(skip).take(max - out.len()) {
            out.push(r);
            next += 1;
        }
    }
    Ok(out)
}

/// The first `width` records of entry bundle `n`: from its own file, or — when a newer
/// checkpoint let that partial go — from the full bundle or a wider partial.
fn read_bundle(dir: &Path, n: u64, width: u64) -> Result<Vec<Vec<u8>>, AuditError> {
    let own = dir.join(bundle_path(n, width));
    let (path, bytes) = match std::fs::read(&own) {
        Ok(b) => (own, b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(other) = partials::wider(dir, n, width) else {
                return Err(AuditError::Io {
                    what: "read",
                    path: own,
                    source: e,
                });
            };
            let bytes = std::fs::read(&other).map_err(|source| AuditError::Io {
                what: "read",
                path: other.clone(),
                source,
            })?;
            (other, bytes)
        }
        Err(source) => {
            return Err(AuditError::Io {
                what: "read",
                path: own,
                source,
            });
        }
    };
    let corrupt = || AuditError::Corrupt {
        path: path.clone(),
        problem: format!("entry bundle does not hold {width} records"),
    };
    let records = parse_bundle(&bytes).ok_or_else(corrupt)?;
    if (records.len() as u64) < width {
        return Err(corrupt());
    }
    let own_width = records.len() as u64 == width;
    if !own_width && path == dir.join(bundle_path(n, width)) {
        return Err(corrupt());
    }
    Ok(records
        .into_iter()
        .take(usize::try_from(width).unwrap_or(usize::MAX))
        .map(<[u8]>::to_vec)
        .collect())
}

/// The size of the checkpoint in `dir`, if one is there (its second line).
fn checkpoint_size(dir: &Path) -> Option<u64> {
    let path = dir.join("checkpoint");
    if std::fs::metadata(&path).ok()?.len() > 16 * 1024 {
        return None;
    }
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .nth(1)?
        .parse()
        .ok()
}

/// Removes the partial tiles no reader needs (those of `sizes` and of the checkpoint already in
/// `dir` stay) and pins that checkpoint.
fn start_partials(dir: &Path, sizes: &[u64]) -> Partials {
    let partials = Partials::default();
    let mut keep = sizes.to_vec();
    if let Some(size) = checkpoint_size(dir) {
        keep.push(size);
        partials
            .pin()
            .store(size, std::sync::atomic::Ordering::SeqCst);
    }
    partials::sweep(dir, &keep);
    partials
}

fn short(dir: &Path) -> AuditError {
    AuditError::Corrupt {
        path: dir.to_path_buf(),
        problem: "tile writer was not given the records it needs".to_owned(),
    }
}

fn slice<'a, T>(items: &'a [T], start: u64, width: u64, dir: &Path) -> Result<&'a [T], AuditError> {
    let s = usize::try_from(start).map_err(|_| short(dir))?;
    let e = usize::try_from(start + width).map_err(|_| short(dir))?;
    items.get(s..e).ok_or_else(|| short(dir))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let io = |what, p: &Path| {
        let p = p.to_path_buf();
        move |source| AuditError::Io {
            what,
            path: p,
            source,
        }
    };
    let parent = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
    std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn a_resumed_mirror_has_the_tree_and_tiles_of_a_rebuilt_one() {
        let records: Vec<Vec<u8>> = (0..700u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let full = tempfile::tempdir().unwrap();
        let rebuilt = Publisher::rebuild(full.path(), records.clone());
        let leaves = full_leaves(full.path());
        assert_eq!(leaves.len(), 512);
        // Resumed from the two whole bundles, given only the records after them.
        let mut resumed = Publisher::resume(full.path(), leaves);
        resumed.extend(records[512..].to_vec());
        assert_eq!(resumed.head(), rebuilt.head());
        let tree = read(&rebuilt.tree).clone();
        assert_eq!(
            resumed.tree().read().unwrap().consistency_proof(300, 700),
            tree.consistency_proof(300, 700)
        );
        // A tile whose bundle is missing (a crash between the two) ends the resumable part.
        std::fs::remove_file(full.path().join(bundle_path(1, TILE_WIDTH))).unwrap();
        assert_eq!(full_leaves(full.path()).len(), 256);
        std::fs::write(full.path().join(tile_path(0, 0, TILE_WIDTH)), b"short").unwrap();
        assert!(full_leaves(full.path()).is_empty());
    }

    #[test]
    fn growth_writes_new_tiles_and_never_rewrites_full_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut tree = Tree::default();
        let records: Vec<Vec<u8>> = (0..600u32).map(|i| i.to_string().into_bytes()).collect();
        for r in &records[..300] {
            tree.push_record(r);
        }
        write_new(dir.path(), &tree, 0, &records[..300], 0).unwrap();
        let full = dir.path().join("tile/0/000");
        assert_eq!(std::fs::read(&full).unwrap(), tree.level(0)[..256].concat());
        assert!(dir.path().join("tile/0/001.p/44").exists());
        assert!(dir.path().join("tile/entries/001.p/44").exists());
        assert_eq!(
            std::fs::read(dir.path().join("tile/1/000.p/1")).unwrap(),
            tree.level(8)[0].to_vec()
        );
        std::fs::write(&full, b"marker").unwrap();
        for r in &records[300..] {
            tree.push_record(r);
        }
        write_new(dir.path(), &tree, 256, &records[256..], 300).unwrap();
        assert_eq!(
            std::fs::read(&full).unwrap(),
            b"marker",
            "full tile rewritten"
        );
        assert_eq!(
            std::fs::read(dir.path().join("tile/0/001")).unwrap(),
            tree.level(0)[256..512].concat()
        );
        assert!(dir.path().join("tile/0/002.p/88").exists());
        let bundle = std::fs::read(dir.path().join("tile/entries/002.p/88")).unwrap();
        assert_eq!(
            bundle,
            bundle_bytes(records[512..].iter().map(Vec::as_slice))
        );
        assert!(dir.path().join("tile/1/000.p/2").exists());
        assert!(dir.path().join("tile/entries/001").exists());
    }

    #[test]
    fn entries_read_back_across_bundles_and_a_short_bundle_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Vec<u8>> = (0..600u32).map(|i| i.to_string().into_bytes()).collect();
        let mut publisher = Publisher::rebuild(dir.path(), records[..10].to_vec());
        publisher.extend(records[10..].to_vec());
        let got = read_entries(dir.path(), 600, 250, 20).unwrap();
        assert_eq!(got, records[250..270].to_vec());
        assert_eq!(read_entries(dir.path(), 600, 590, 100).unwrap().len(), 10);
        assert!(read_entries(dir.path(), 600, 600, 100).unwrap().is_empty());
        // An older size still reads: partial bundles of past sizes stay.
        assert_eq!(
            read_entries(dir.path(), 10, 0, 1000).unwrap(),
            records[..10].to_vec()
        );
        std::fs::write(dir.path().join(bundle_path(2, 88)), [0, 5, b'a']).unwrap();
        assert!(matches!(
            read_entries(dir.path(), 600, 520, 1),
            Err(AuditError::Corrupt { .. })
        ));
    }
}
