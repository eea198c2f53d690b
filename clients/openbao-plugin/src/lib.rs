//! OpenBao KMS plugin for keybroker (`openbao-kms-keybroker`): bao starts it as a go-plugin
//! subprocess, talks gRPC to it over mutually authenticated TLS, and the plugin forwards the
//! seal's Encrypt and Decrypt to keybroker's `DataKeys` API with a key of purpose SEAL.
//!
//! Rooms: `handshake` (environment and the stdout handshake line), `tls` and `pinned` (server
//! identity, bao's pinned client certificate), `settings` (the seal stanza), `seal` (broker
//! calls), `wrapper` (the `pb.Wrapper` service), `server` (binding and serving), `hclog`
//! (stderr lines bao re-logs at their level).

pub mod handshake;
pub mod hclog;
pub mod pinned;
pub mod seal;
pub mod server;
pub mod settings;
pub mod tls;
pub mod wrapper;

pub use server::{RunError, run};

/// Messages and stubs generated from `proto/*.proto` (our own copies of the wire contract).
pub mod proto {
    /// Package `wrapping`: go-kms-wrapping's shared messages.
    pub mod wrapping {
        #![allow(
            missing_docs,
            clippy::all,
            clippy::unwrap_used,
            clippy::expect_used,
            clippy::panic
        )]
        tonic::include_proto!("wrapping");
    }
    /// Package `pb`: the `Wrapper` service.
    pub mod pb {
        #![allow(
            missing_docs,
            clippy::all,
            clippy::unwrap_used,
            clippy::expect_used,
            clippy::panic
        )]
        tonic::include_proto!("pb");
    }
    /// Package `plugin`: go-plugin's controller.
    pub mod plugin {
        #![allow(
            missing_docs,
            clippy::all,
            clippy::unwrap_used,
            clippy::expect_used,
            clippy::panic
        )]
        tonic::include_proto!("plugin");
    }
}
