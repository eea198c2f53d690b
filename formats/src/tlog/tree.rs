//! The log's side of RFC 6962: an append-only Merkle tree of records, kept as complete
//! subtrees per level so that tlog-tiles, roots of any size and proofs are cheap.
//!
//! Pure: no I/O. `levels[k][i]` is the hash of the complete subtree of `2^k` leaves starting at
//! leaf `i * 2^k`.

use super::{Hash, empty_root, leaf_hash, node_hash};

/// An append-only Merkle tree of leaf hashes.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// Number of leaves.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends the record `data` as the next leaf.
    pub fn push_record(&mut self, data: &[u8]) {
        self.push(leaf_hash(data));
    }

    /// Appends a leaf hash, completing every subtree it closes.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let row = &mut self.levels[level];
            row.push(hash);
            if row.len() % 2 == 1 {
                return;
            }
            let n = row.len();
            hash = node_hash(&row[n - 2], &row[n - 1]);
            level += 1;
        }
    }

    /// Complete-subtree hashes at `level` (each covers `2^level` leaves).
    #[must_use]
    pub fn level(&self, level: usize) -> &[Hash] {
        self.levels.get(level).map_or(&[], Vec::as_slice)
    }

    /// The RFC 6962 root (MTH) of the first `size` leaves; `None` if `size` exceeds the tree.
    #[must_use]
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        if size > self.size() {
            return None;
        }
        if size == 0 {
            return Some(empty_root());
        }
        // The tree of `size` leaves is the complete subtrees of its binary decomposition, left
        // to right, folded from the right.
        let mut parts = Vec::new();
        let mut start = 0u64;
        for k in (0..64).rev() {
            if size & (1 << k) != 0 {
                let row = self.levels.get(k)?;
                parts.push(*row.get(usize::try_from(start >> k).ok()?)?);
                start += 1 << k;
            }
        }
        let mut acc = parts.pop()?;
        while let Some(left) = parts.pop() {
            acc = node_hash(&left, &acc);
        }
        Some(acc)
    }

    /// The root of the whole tree.
    #[must_use]
    pub fn root(&self) -> Hash {
        self.root_at(self.size()).unwrap_or_default()
    }

    /// MTH of the `n > 0` leaves from `start` (RFC 6962 §2.1), using stored complete subtrees
    /// where the range is one; `None` past the end of the tree.
    fn range_hash(&self, start: u64, n: u64) -> Option<Hash> {
        if n == 0 || start.checked_add(n)? > self.size() {
            return None;
        }
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let level = self.levels.get(n.trailing_zeros() as usize)?;
            return level.get(usize::try_from(start / n).ok()?).copied();
        }
        let k = split(n);
        Some(node_hash(
            &self.range_hash(start, k)?,
            &self.range_hash(start + k, n - k)?,
        ))
    }

    /// RFC 6962 audit path (RFC 9162 §2.1.3.1) of leaf `index` in the tree of the first `size`
    /// leaves; `None` unless `index < size <= self.size()`.
    #[must_use]
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.size() {
            return None;
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof)?;
        Some(proof)
    }

    /// PATH(m, D[start:start+n]), appended leaf-first.
    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) -> Option<()> {
        if n <= 1 {
            return Some(());
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, out)?;
            out.push(self.range_hash(start + k, n - k)?);
        } else {
            self.path(m - k, start + k, n - k, out)?;
            out.push(self.range_hash(start, k)?);
        }
        Some(())
    }

    /// RFC 6962 consistency proof (RFC 9162 §2.1.4.1) between the trees of the first `old`
    /// and `new` leaves; `None` unless `0 < old <= new <= self.size()`. Empty when equal.
    #[must_use]
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        if old == 0 || old > new || new > self.size() {
            return None;
        }
        let mut proof = Vec::new();
        if old < new {
            self.subproof(old, 0, new, true, &mut proof)?;
        }
        Some(proof)
    }

    /// SUBPROOF(m, D[start:start+n], b).
    fn subproof(&self, m: u64, start: u64, n: u64, b: bool, out: &mut Vec<Hash>) -> Option<()> {
        if m == n {
            if !b {
                out.push(self.range_hash(start, n)?);
            }
            return Some(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, b, out)?;
            out.push(self.range_hash(start + k, n - k)?);
        } else {
            self.subproof(m - k, start + k, n - k, false, out)?;
            out.push(self.range_hash(start, k)?);
        }
        Some(())
    }
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

    use super::*;

    /// The RFC 6962 test vectors of certificate-transparency (merkle_tree_test): the roots of
    /// the first n of these eight leaves (cross-checked with a Python hashlib computation).
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// MTH straight from RFC 6962 §2.1 (recursive split at the largest power of two < n).
    fn reference(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&reference(&leaves[..k]), &reference(&leaves[k..]))
            }
        }
    }

    #[test]
    fn roots_match_the_rfc6962_test_vectors() {
        let mut tree = Tree::default();
        assert_eq!(
            hex::encode(tree.root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (leaf, want) in LEAVES.iter().zip(ROOTS) {
            tree.push_record(leaf);
            assert_eq!(hex::encode(tree.root()), want);
        }
        for (n, want) in ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(tree.root_at(n as u64 + 1).unwrap()), *want);
        }
        assert_eq!(tree.root_at(9), None);
    }

    #[test]
    fn roots_of_every_size_match_the_reference_definition() {
        let mut tree = Tree::default();
        let mut leaves = Vec::new();
        for i in 0..1100u32 {
            let h = leaf_hash(&i.to_be_bytes());
            leaves.push(h);
            tree.push(h);
        }
        for n in [
            0, 1, 2, 3, 255, 256, 257, 511, 512, 513, 1000, 1024, 1099, 1100,
        ] {
            assert_eq!(
                tree.root_at(n as u64).unwrap(),
                reference(&leaves[..n]),
                "size {n}"
            );
        }
        // Level 8 holds the roots of full 256-leaf subtrees (the level-1 tile hashes).
        assert_eq!(tree.level(8).len(), 4);
        assert_eq!(tree.level(8)[1], reference(&leaves[256..512]));
    }

    fn tree_of(n: u64) -> Tree {
        let mut tree = Tree::default();
        for i in 0..n {
            tree.push_record(&i.to_be_bytes());
        }
        tree
    }

    fn theirs(h: &Hash) -> tlog_tiles::Hash {
        tlog_tiles::Hash(*h)
    }

    /// Every inclusion and consistency proof of small trees is accepted by an implementation
    /// we did not write (Cloudflare's port of Go's sumdb/tlog), and a wrong leaf is not.
    #[test]
    fn proofs_verify_with_an_independent_implementation() {
        let tree = tree_of(70);
        for size in 1..=70u64 {
            let root = theirs(&tree.root_at(size).unwrap());
            for index in 0..size {
                let proof: Vec<_> = tree
                    .inclusion_proof(index, size)
                    .unwrap()
                    .iter()
                    .map(theirs)
                    .collect();
                let leaf = theirs(&leaf_hash(&index.to_be_bytes()));
                tlog_tiles::check_record(&proof, size, root, index, leaf)
                    .unwrap_or_else(|e| panic!("inclusion {index} in {size}: {e:?}"));
                let wrong = theirs(&leaf_hash(b"not the record"));
                assert!(tlog_tiles::check_record(&proof, size, root, index, wrong).is_err());
            }
            for old in 1..=size {
                let proof: Vec<_> = tree
                    .consistency_proof(old, size)
                    .unwrap()
                    .iter()
                    .map(theirs)
                    .collect();
                let old_root = theirs(&tree.root_at(old).unwrap());
                tlog_tiles::check_tree(&proof, size, root, old, old_root)
                    .unwrap_or_else(|e| panic!("consistency {old} -> {size}: {e:?}"));
            }
        }
    }

    #[test]
    fn proofs_outside_the_tree_are_refused() {
        let tree = tree_of(10);
        assert_eq!(tree.inclusion_proof(10, 10), None);
        assert_eq!(tree.inclusion_proof(0, 11), None);
        assert_eq!(tree.inclusion_proof(0, 0), None);
        assert_eq!(tree.consistency_proof(0, 5), None);
        assert_eq!(tree.consistency_proof(6, 5), None);
        assert_eq!(tree.consistency_proof(5, 11), None);
        assert_eq!(tree.consistency_proof(5, 5), Some(Vec::new()));
        assert_eq!(tree.inclusion_proof(0, 1), Some(Vec::new()));
    }

    proptest::proptest! {
        #[test]
        fn large_tree_proofs_verify_independently(size in 1u64..3000, seed in 0u64..u64::MAX) {
            let tree = tree_of(size);
            let index = seed % size;
            let old = 1 + (seed / 7) % size;
            let root = theirs(&tree.root_at(size).unwrap());
            let proof: Vec<_> = tree.inclusion_proof(index, size).unwrap().iter().map(theirs).collect();
            let leaf = theirs(&leaf_hash(&index.to_be_bytes()));
            proptest::prop_assert!(tlog_tiles::check_record(&proof, size, root, index, leaf).is_ok());
            let proof: Vec<_> = tree.consistency_proof(old, size).unwrap().iter().map(theirs).collect();
            let old_root = theirs(&tree.root_at(old).unwrap());
            proptest::prop_assert!(tlog_tiles::check_tree(&proof, size, root, old, old_root).is_ok());
        }
    }
}
