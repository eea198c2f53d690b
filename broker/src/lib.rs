//! keybroker: a gRPC key broker whose key-encryption keys live in PKCS#11 HSMs.
//!
//! `keybrokerd` is a thin binary over [`run`]; tests call the same function on `127.0.0.1:0`.

pub mod api;
mod attestation;
pub mod audit;
pub mod config;
pub mod dev;
pub mod hardening;
mod health;
pub mod hsm;
mod http;
pub mod identity;
pub mod keys;
pub mod logging;
pub(crate) mod metrics;
pub mod policy;
mod server;
pub mod store;
mod tls;

pub use server::{Broker, EnsureKeyError, ReloadError, Reloader, StartError, run};
