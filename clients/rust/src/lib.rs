//! Client library for keybroker: connect over TLS (optionally mTLS) with a bearer token from a
//! file, then generate and open data keys and administer keys through the `keybroker.v1` gRPC
//! API. Key material comes back in `Zeroizing` buffers whose `Debug` prints `[redacted]`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keybroker_client::ClientError> {
//! use std::collections::BTreeMap;
//! use keybroker_client::{Client, ClientConfig};
//!
//! let cfg = ClientConfig {
//!     ca: Some("/var/run/keybroker/ca.pem".into()),
//!     token_file: Some("/var/run/secrets/tokens/keybroker".into()),
//!     ..ClientConfig::new("https://keybroker.example:8443")
//! };
//! let client = Client::connect(cfg).await?;
//! let context = BTreeMap::from([("dataset".to_owned(), "imagenet".to_owned())]);
//! let dk = client.generate_data_key("datasets/imagenet-eu", &context, None).await?;
//! // use dk.plaintext until dk.expires_at; store dk.ciphertext with the data
//! # Ok(()) }
//! ```

mod admin;
mod attested;
pub mod audit;
pub mod cache;
mod client;
mod config;
pub mod dev_attestation;
pub mod dev_token;
mod error;
pub mod file;
mod lifecycle;
pub mod recipient;
pub mod retry;
pub mod signing;
mod token;
mod types;

/// The Cedar schema and `check()` the broker loads policies with (`keybroker_formats::policy`).
pub use keybroker_formats::policy;
/// The sealed-key format of attested release (`keybroker_formats::release`).
pub use keybroker_formats::release;

pub use attested::{ATTESTATION_HEADER, AttestationNonce, Attested, Release};
pub use cache::{DataKeyCache, LeasedKey};
pub use client::{Client, MAX_REQUEST_ID_PREFIX, REQUEST_ID_HEADER};
pub use config::ClientConfig;
pub use error::{ClientError, code_name};
pub use lifecycle::RevokeTarget;
pub use recipient::{RecipientKey, RecipientKeyError};
pub use retry::RetryPolicy;
pub use types::{
    DataKey, DecryptedKey, KeyInfo, KeyPage, KeyPurpose, KeyState, KeyVersionInfo, ReEncrypted,
    Revocation, Wrapped,
};
