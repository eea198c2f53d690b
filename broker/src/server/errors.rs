//! Why the broker did not start.

/// Why the broker did not start. Each message names the config field involved.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// PIN unreadable.
    #[error("{field}: {source}")]
    Pin {
        /// Inventory field.
        field: String,
        /// Cause.
        source: hsm_config::InventoryError,
    },
    /// HSM connection or login failed.
    #[error("{field}: {source}")]
    Hsm {
        /// Inventory field.
        field: String,
        /// Cause.
        source: crate::hsm::HsmError,
    },
    /// Catalog failed to open.
    #[error("{field}: {source}")]
    Store {
        /// Config field of the catalog.
        field: &'static str,
        /// Cause.
        source: crate::store::StoreError,
    },
    /// The Cedar policy failed to load or validate.
    #[error("policy.file: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// JWKS failed to load.
    #[error("identity.jwt_issuers: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    /// An attestation verifier's JWKS failed to load.
    #[error("attestation.verifiers: {0}")]
    Attestation(#[from] crate::attestation::AttestationError),
    /// The mTLS client CA bundle failed to load.
    #[error("identity.client_ca_file: {0}")]
    ClientCa(crate::identity::IdentityError),
    /// TLS files unreadable.
    #[error("server.tls_cert / server.tls_key: {0}")]
    Tls(std::io::Error),
    /// Reflection descriptor set broken (a build problem).
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The audit checkpoint key cannot be used (fail closed: no signer, no broker).
    #[error("{field}: {source}")]
    CheckpointKey {
        /// Inventory field.
        field: String,
        /// Cause.
        source: crate::audit::checkpoint::KeyError,
    },
    /// The audit log failed to open (fail closed: no audit, no broker).
    #[error("audit.dir: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// Completing a key version interrupted by a crash failed.
    #[error("key recovery: {0}")]
    Recovery(crate::keys::KeyError),
    /// The HTTPS side port failed to start.
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    /// Serving failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}
