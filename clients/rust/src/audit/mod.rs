//! The audit log as an auditor sees it: the broker's `Audit` calls, and offline verification
//! that needs nothing from the broker — RFC 6962 proofs, C2SP signed-note checkpoints with an
//! Ed25519 verifier key, and a whole C2SP tlog-tiles directory re-derived from its records.
//!
//! The verification half is independent of the broker crate: an auditor runs only the
//! `keybroker` CLI. The proofs and notes are `keybroker_formats::tlog`'s (re-exported here),
//! the same code the broker writes its log with; reading a tiles directory is [`tiles`].

mod calls;
pub mod rollback;
pub mod tiles;

pub use keybroker_formats::tlog::{note, proof};

pub use calls::{AuditEntry, AuditStream, SignedCheckpoint};
