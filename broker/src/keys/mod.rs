//! Keys: names, encryption contexts, the ciphertext envelope, and the data-key operations.
//!
//! Everything here that parses caller input is pure and reports a [`KeyInputError`] or an
//! [`envelope::EnvelopeError`], which the API layer maps to `INVALID_ARGUMENT`.

pub mod context;
pub mod envelope;
mod error;
mod input;
pub mod name;
mod service;

pub use error::KeyError;
pub use input::KeyInputError;
pub use service::{
    Caller, DATA_KEY_LEN, HsmHandle, KeyService, KeySettings, Lease, MAX_SEAL_PLAINTEXT, Released,
    Sealed,
};
