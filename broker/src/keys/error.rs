//! Errors of key operations, sorted so the API layer can map each to exactly one gRPC code.

use crate::hsm::HsmError;
use crate::store::StoreError;

use super::KeyInputError;
use super::envelope::EnvelopeError;

/// Why a key operation did not happen. Display texts are safe for callers: no key material,
/// no plaintext, no token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Bad name, context or payload.
    #[error(transparent)]
    Input(#[from] KeyInputError),
    /// The ciphertext is not a well-formed envelope.
    #[error("malformed ciphertext: {0}")]
    Envelope(#[from] EnvelopeError),
    /// Some other invalid argument.
    #[error("{0}")]
    Invalid(String),
    /// Unknown key. Answered like a policy denial so key names do not leak.
    #[error("permission denied")]
    NotFound,
    /// The residency guard refused (which rule is in the message).
    #[error("residency: {0}")]
    Residency(String),
    /// The key or version exists but is not usable in its current state.
    #[error("{0}")]
    Precondition(String),
    /// The caller's job or principal had its leases revoked (job teardown).
    #[error("leases of this job or principal are revoked")]
    Revoked,
    /// The ciphertext did not authenticate under this key and context.
    #[error("ciphertext or encryption context does not match")]
    DecryptFailed,
    /// The name is taken (names are never reused).
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// A concurrent change won; the caller may retry.
    #[error("concurrent change of key {0}; retry")]
    Conflict(String),
    /// The HSM failed.
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    /// The HSM's encryption did not decrypt back to the plaintext (XKS CDIV self-check).
    #[error("the HSM's encryption did not verify")]
    SelfCheck,
    /// The catalog failed.
    #[error("catalog: {0}")]
    Store(#[from] StoreError),
}
