//! Keys: names, encryption contexts, the ciphertext envelope, and the data-key operations.

pub mod envelope;
