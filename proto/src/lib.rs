//! The keybroker gRPC API, package `keybroker.v1`: messages, client and server stubs generated
//! from `proto/keybroker/v1/*.proto`, and the encoded descriptor set for server reflection.

/// Package `keybroker.v1`.
pub mod v1 {
    #![allow(
        missing_docs,
        clippy::all,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )]
    tonic::include_proto!("keybroker.v1");
}

/// Encoded `FileDescriptorSet` of every keybroker proto file (for `tonic-reflection`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/keybroker_descriptor.bin"));
