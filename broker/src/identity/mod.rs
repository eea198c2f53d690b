//! Workload identity: who is calling, as a normalized [`Principal`] for policy and audit.
//!
//! Today: JWTs from configured issuers whose keys come from a JWKS file (Kubernetes projected
//! service-account tokens, SPIFFE JWT-SVIDs, the dev issuer). There is no anonymous mode.

mod jwt;

pub use jwt::{IssuerSettings, JwtVerifier};

/// Errors of identity verification. Messages are safe to return to the caller: they never
/// contain the token.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No `authorization: Bearer …` metadata.
    #[error("missing bearer token")]
    Missing,
    /// The token is malformed, forged, expired, or from an unknown issuer.
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    /// The signature or a registered claim did not verify.
    #[error("invalid token: {0}")]
    Rejected(#[source] jsonwebtoken::errors::Error),
    /// An issuer's JWKS could not be loaded.
    #[error("issuer {issuer}: cannot load JWKS {path}: {problem}")]
    Jwks {
        /// Issuer URL.
        issuer: String,
        /// JWKS file.
        path: String,
        /// What went wrong.
        problem: String,
    },
}

/// The normalized identity of a caller, handed to policy and audit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// Token issuer.
    pub issuer: String,
    /// Token subject (`system:serviceaccount:ns:sa`, a SPIFFE ID, …).
    pub subject: String,
    /// Kubernetes namespace, when the token says.
    pub namespace: Option<String>,
    /// Kubernetes service account, when the token says.
    pub service_account: Option<String>,
    /// Kubernetes pod name, when the token says.
    pub pod: Option<String>,
    /// SPIFFE ID, when the subject is one.
    pub spiffe_id: Option<String>,
    /// Training job id, from verified identity only.
    pub job_id: Option<String>,
}
