//! Signing with the broker's SIGN keys (issue 19): the `Signing` calls, the formats of what
//! they return (shared with the broker), and offline verification of a signature and of its
//! transparency receipt (the audit record's inclusion under a signed checkpoint).

pub mod bundle;
mod calls;
pub mod format;

pub use calls::{PublicKeyInfo, SignedDigest, SignedStatement};
