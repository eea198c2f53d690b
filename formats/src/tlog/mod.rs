//! The transparency log as both sides see it: RFC 6962 hashing (leaf prefix 0x00, node prefix
//! 0x01, SHA-256), the tree the log keeps ([`tree`]) and the proofs a verifier checks
//! ([`proof`]), the C2SP tlog-tiles layout ([`tiles`]) and the C2SP signed-note checkpoint
//! ([`note`]). The broker writes with these functions and auditors verify with the same ones,
//! so writer and verifier cannot disagree. Pure: no I/O.

pub mod note;
pub mod proof;
pub mod tiles;
pub mod tree;

use sha2::{Digest as _, Sha256};

pub use tree::Tree;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || record)`: the leaf hash of a record.
#[must_use]
pub fn leaf_hash(record: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(record);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
#[must_use]
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}
