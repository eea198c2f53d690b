//! The audit log as an auditor sees it: the broker's `Audit` calls, and offline verification
//! that needs nothing from the broker — RFC 6962 proofs, C2SP signed-note checkpoints with an
//! Ed25519 verifier key, and a whole C2SP tlog-tiles directory re-derived from its records.
//!
//! The verification half is pure and independent of the broker crate: an auditor runs only the
//! `keybroker` CLI. Cryptography is `ring`'s (SHA-256, Ed25519).

mod calls;
pub mod note;
pub mod proof;
pub mod rollback;
pub mod tiles;

pub use calls::{AuditEntry, AuditStream, SignedCheckpoint};
