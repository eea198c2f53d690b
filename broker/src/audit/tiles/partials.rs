//! Partial tiles: which ones a reader needs, and removing the rest.
//!
//! Every growth of the log writes new partial tiles (`tile/<L>/<N>.p/<W>`, and the entry
//! bundle beside them). A reader only ever needs those of the checkpoint it holds, so keeping
//! every width ever written cost a mirror 55–66 KB of disk per record. The publisher keeps the
//! partials of the newest checkpoint written into the directory and of every size since (a
//! checkpoint being signed may be of any of them), and removes the older ones — as C2SP
//! tlog-tiles allows; a reader that misses one falls back to a wider tile ([`wider`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keybroker_formats::tlog::tiles::wider_partial;

use super::{TILE_WIDTH, bundle_path, tile_path};

/// The partial tile and bundle paths a reader of a checkpoint of `size` records reads.
pub(crate) fn needed(size: u64) -> Vec<String> {
    let mut out = Vec::new();
    for level in 0u32..8 {
        let count = size >> (8 * level);
        if count == 0 {
            break;
        }
        let width = count % TILE_WIDTH;
        if width > 0 {
            out.push(tile_path(level, count / TILE_WIDTH, width));
            if level == 0 {
                out.push(bundle_path(count / TILE_WIDTH, width));
            }
        }
    }
    out
}

/// The partial files a publisher wrote and has not removed yet.
#[derive(Debug, Default)]
pub(crate) struct Partials {
    /// Size of the newest checkpoint in the directory (set by whoever writes it).
    pinned: Arc<AtomicU64>,
    /// Each written partial path with the tree size it was written at.
    written: Vec<(u64, String)>,
}

impl Partials {
    /// The handle through which the checkpoint writer reports the size it wrote.
    pub(crate) fn pin(&self) -> Arc<AtomicU64> {
        self.pinned.clone()
    }

    /// Notes the partial paths written at tree size `size`.
    pub(crate) fn wrote(&mut self, size: u64, paths: impl IntoIterator<Item = String>) {
        self.written.extend(paths.into_iter().map(|p| (size, p)));
    }

    /// Removes the partials written below the pinned checkpoint's size that neither that
    /// checkpoint nor the tree of `head` records reads.
    pub(crate) fn prune(&mut self, dir: &Path, head: u64) {
        let pinned = self.pinned.load(Ordering::SeqCst);
        let keep: HashSet<String> = needed(pinned).into_iter().chain(needed(head)).collect();
        self.written.retain(|(size, path)| {
            if *size >= pinned || keep.contains(path) {
                return true;
            }
            remove(&dir.join(path));
            false
        });
    }
}

fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            // The `.p` directory goes once its last width is gone (fails while it has others).
            if let Some(parent) = path.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, path = %path.display(), "audit tiles: cannot remove"),
    }
}

/// At start: removes every partial file under `dir/tile` that none of `sizes` reads (left by
/// earlier runs, or by versions that kept them all). Walks the directories only.
pub(crate) fn sweep(dir: &Path, sizes: &[u64]) {
    let keep: HashSet<PathBuf> = sizes
        .iter()
        .flat_map(|s| needed(*s))
        .map(|p| dir.join(p))
        .collect();
    let mut stack = vec![dir.join("tile")];
    let mut removed = 0u64;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir {
                continue;
            }
            if path.extension().is_some_and(|e| e == "p") {
                for file in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                    let f = file.path();
                    if !keep.contains(&f) {
                        remove(&f);
                        removed += 1;
                    }
                }
            } else {
                stack.push(path);
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "audit tiles: removed stale partial tiles");
    }
}

/// The file that holds the first `width` entries of bundle `n` when its own partial bundle is
/// gone: the full bundle, or the narrowest wider partial.
pub(crate) fn wider(dir: &Path, n: u64, width: u64) -> Option<PathBuf> {
    let full = dir.join(bundle_path(n, TILE_WIDTH));
    if full.exists() {
        return Some(full);
    }
    let partial_dir = dir.join(bundle_path(n, 1)).parent()?.to_path_buf();
    let present = std::fs::read_dir(&partial_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok());
    wider_partial(width, present).map(|w| dir.join(bundle_path(n, w)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_needs_one_partial_per_level_and_the_bundle() {
        assert!(needed(0).is_empty());
        assert_eq!(
            needed(256),
            vec!["tile/1/000.p/1"],
            "no level-0 partial at 256"
        );
        assert_eq!(needed(3), vec!["tile/0/000.p/3", "tile/entries/000.p/3"]);
        assert_eq!(
            needed(300),
            vec!["tile/0/001.p/44", "tile/entries/001.p/44", "tile/1/000.p/1"]
        );
        assert_eq!(needed(512), vec!["tile/1/000.p/2"]);
    }
}
