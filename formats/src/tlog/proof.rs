//! The verifier's side of RFC 6962: the proof checks of RFC 9162 §2.1.3.2 (inclusion) and
//! §2.1.4.2 (consistency), and the root of a sequence of leaves pushed one by one. Pure.

pub use super::{Hash, empty_root, leaf_hash, node_hash};

/// Builds the RFC 6962 root of a sequence of leaf hashes pushed one by one, keeping only the
/// right frontier (one hash per set bit of the size).
#[derive(Debug, Default, Clone)]
pub struct RootBuilder {
    /// Complete subtrees, largest first: (leaf count, hash).
    frontier: Vec<(u64, Hash)>,
    size: u64,
}

impl RootBuilder {
    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.size += 1;
        let mut node = (1u64, leaf);
        while let Some(&(n, left)) = self.frontier.last() {
            if n != node.0 {
                break;
            }
            self.frontier.pop();
            node = (n * 2, node_hash(&left, &node.1));
        }
        self.frontier.push(node);
    }

    /// Leaves pushed so far.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the leaves pushed so far.
    #[must_use]
    pub fn root(&self) -> Hash {
        let mut parts = self.frontier.iter().rev();
        let Some(&(_, mut acc)) = parts.next() else {
            return empty_root();
        };
        for (_, left) in parts {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index or sizes are out of range.
    #[error("proof parameters out of range: {0}")]
    Range(&'static str),
    /// The proof has the wrong number of hashes.
    #[error("proof has the wrong length")]
    Length,
    /// The proof does not lead to the expected root.
    #[error("proof does not match the root")]
    Mismatch,
}

/// Checks that `leaf` is at `index` in the tree of `size` leaves with root `root`.
///
/// # Errors
/// [`ProofError`] for any proof that does not establish exactly that.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Range("index must be below the tree size"));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::Length);
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Length);
    }
    if &r == root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

/// Checks that the tree of `old` leaves with root `old_root` is a prefix of the tree of `new`
/// leaves with root `new_root`.
///
/// # Errors
/// [`ProofError`] for any proof that does not establish exactly that.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old == 0 || old > new {
        return Err(ProofError::Range("need 0 < old <= new"));
    }
    if old == new {
        return if !proof.is_empty() {
            Err(ProofError::Length)
        } else if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::Mismatch)
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::Length);
    };
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::Length);
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Length);
    }
    if &fr == old_root && &sr == new_root {
        Ok(())
    } else {
        Err(ProofError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    /// MTH by the RFC 6962 definition, and its PATH and PROOF, to generate proofs here.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n);
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }
    fn split(n: usize) -> usize {
        1 << (usize::BITS - 1 - (n - 1).leading_zeros())
    }
    fn path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return Vec::new();
        }
        let k = split(n);
        if m < k {
            let mut p = path(m, &leaves[..k]);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = path(m - k, &leaves[k..]);
            p.push(mth(&leaves[..k]));
            p
        }
    }
    fn subproof(m: usize, leaves: &[Hash], b: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if b { Vec::new() } else { vec![mth(leaves)] };
        }
        let k = split(n);
        if m <= k {
            let mut p = subproof(m, &leaves[..k], b);
            p.push(mth(&leaves[k..]));
            p
        } else {
            let mut p = subproof(m - k, &leaves[k..], false);
            p.push(mth(&leaves[..k]));
            p
        }
    }
    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u32).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn root_builder_matches_the_definition() {
        let l = leaves(300);
        let mut b = RootBuilder::default();
        assert_eq!(b.root(), empty_root());
        for (i, h) in l.iter().enumerate() {
            b.push(*h);
            assert_eq!(b.root(), mth(&l[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        let l = leaves(40);
        for n in 1..=40 {
            let root = mth(&l[..n]);
            for m in 0..n {
                let p = path(m, &l[..n]);
                assert_eq!(
                    verify_inclusion(m as u64, n as u64, &l[m], &p, &root),
                    Ok(())
                );
                let other = leaf_hash(b"x");
                assert!(verify_inclusion(m as u64, n as u64, &other, &p, &root).is_err());
                if let Some((first, rest)) = p.split_first() {
                    let mut bad = vec![node_hash(first, first)];
                    bad.extend_from_slice(rest);
                    assert!(verify_inclusion(m as u64, n as u64, &l[m], &bad, &root).is_err());
                    assert!(verify_inclusion(m as u64, n as u64, &l[m], rest, &root).is_err());
                }
            }
            assert!(verify_inclusion(n as u64, n as u64, &l[0], &[], &root).is_err());
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails() {
        let l = leaves(40);
        for n in 1..=40 {
            let new_root = mth(&l[..n]);
            for m in 1..=n {
                let old_root = mth(&l[..m]);
                let p = if m == n {
                    Vec::new()
                } else {
                    subproof(m, &l[..n], true)
                };
                assert_eq!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &p),
                    Ok(()),
                    "{m} -> {n}"
                );
                let wrong = leaf_hash(b"rewritten");
                assert!(verify_consistency(m as u64, n as u64, &wrong, &new_root, &p).is_err());
                assert!(verify_consistency(m as u64, n as u64, &old_root, &wrong, &p).is_err());
                if !p.is_empty() {
                    assert!(
                        verify_consistency(m as u64, n as u64, &old_root, &new_root, &p[1..])
                            .is_err()
                    );
                }
            }
        }
        assert!(verify_consistency(0, 3, &empty_root(), &empty_root(), &[]).is_err());
    }
}
