//! Keys: names, encryption contexts, the ciphertext envelope, the data-key operations, the
//! lifecycle (states, destruction, rotation, lease revocation) and its scheduler and clock.
//!
//! Everything here that parses caller input is pure and reports a [`KeyInputError`] or an
//! [`envelope::EnvelopeError`], which the API layer maps to `INVALID_ARGUMENT`.

mod catalog;
pub mod clock;
pub mod context;
mod datakeys;
pub mod envelope;
mod error;
mod input;
pub mod leases;
mod lifecycle;
pub mod name;
mod scheduler;
mod service;
pub mod sign_input;
mod signing;
pub mod xks;

pub use catalog::{KeyUpdate, MIN_ROTATION_PERIOD};
pub use error::KeyError;
pub use input::KeyInputError;
pub use lifecycle::{KeyChange, transition, version_transition};
pub use scheduler::Scheduler;
pub use service::{
    Caller, DATA_KEY_LEN, GCM_RANDOM_IV_LIMIT, HsmHandle, KeyService, KeySettings, Lease,
    MAX_DESTRUCTION_WAIT, MAX_SEAL_PLAINTEXT, Released, Sealed,
};
pub use signing::{PublicKeyInfo, Signature};
