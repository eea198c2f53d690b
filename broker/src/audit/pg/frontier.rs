//! The compact Merkle frontier kept in `audit_head`: the roots of the complete subtrees of the
//! log's binary decomposition, largest first. Enough to append leaves and compute the RFC 6962
//! root in the same transaction that appends the entries, without reading old entries.
//!
//! Pure: no I/O.

use sha2::{Digest as _, Sha256};

use keybroker_formats::tlog::{Hash, node_hash};

/// The frontier of a log of `size` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Frontier {
    size: u64,
    /// One hash per set bit of `size`, the highest bit first.
    roots: Vec<Hash>,
}

impl Frontier {
    /// Decodes the stored form (32-byte hashes, concatenated); `None` when it does not fit
    /// `size` (a damaged head row).
    pub(crate) fn decode(size: u64, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 32 * size.count_ones() as usize {
            return None;
        }
        let roots = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().ok())
            .collect::<Option<Vec<Hash>>>()?;
        Some(Self { size, roots })
    }

    /// The stored form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        self.roots.concat()
    }

    /// Number of leaves.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub(crate) fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        // Each trailing 1 bit of the old size is a complete subtree the new leaf completes.
        while size & 1 == 1 {
            match self.roots.pop() {
                Some(left) => hash = node_hash(&left, &hash),
                None => break,
            }
            size >>= 1;
        }
        self.roots.push(hash);
        self.size += 1;
    }

    /// The RFC 6962 root (MTH): the subtree roots folded from the right.
    pub(crate) fn root(&self) -> Hash {
        let mut parts = self.roots.iter().rev();
        let Some(last) = parts.next() else {
            return Sha256::digest([]).into();
        };
        parts.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use proptest::prelude::*;

    use super::*;
    use keybroker_formats::tlog::{Tree, leaf_hash};

    proptest! {
        #[test]
        fn frontier_root_equals_the_full_tree_root_at_every_size(n in 0usize..300) {
            let mut tree = Tree::default();
            let mut f = Frontier::default();
            prop_assert_eq!(f.root(), tree.root());
            for i in 0..n {
                let leaf = leaf_hash(&i.to_be_bytes());
                tree.push(leaf);
                f.push(leaf);
                prop_assert_eq!(f.root(), tree.root());
                let stored = Frontier::decode(f.size(), &f.encode()).unwrap();
                prop_assert_eq!(&stored, &f);
            }
        }
    }

    #[test]
    fn a_frontier_that_does_not_fit_its_size_is_refused() {
        assert!(Frontier::decode(3, &[0u8; 32]).is_none());
        assert!(Frontier::decode(0, &[]).is_some());
        assert!(Frontier::decode(4, &[0u8; 32]).is_some());
    }
}
