//! Workload identity: who is calling, as a normalized [`Principal`] for policy and audit.
//!
//! JWTs from configured issuers whose keys come from a JWKS file or URL (Kubernetes projected
//! service-account tokens, SPIFFE JWT-SVIDs, the dev issuer), X.509-SVID client certificates
//! (mTLS), or both, as `[identity] mode` says. There is no anonymous mode. Every rejection
//! carries a reason for the server log; the caller only learns "invalid token".

mod authn;
mod claims;
pub(crate) mod jwks;
pub(crate) mod jws;
mod jwt;
mod mtls;
mod principal;
pub(crate) mod remote;
pub(crate) mod spiffe;
pub(crate) mod strict_json;
pub(crate) mod svid;
mod token_cache;

#[cfg(test)]
mod jwks_tests;
#[cfg(test)]
mod mtls_tests;

#[cfg(test)]
pub(crate) mod hostile_tests;

pub use authn::Authenticator;
/// Reads an integer time claim (`iat`, `exp`, `nbf`): refuses floats, strings and values past 2^40.
pub(crate) use claims::time as claim_time;
pub use jwt::{IssuerSettings, JwtVerifier};
pub use mtls::{ClientCa, Reloaded};
pub use principal::{Principal, Reason};
pub use svid::{Svid, SvidError, fingerprint};

/// Errors of identity verification. The `Display` text is for the server log; the API layer
/// answers the caller with a fixed message.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No `authorization: Bearer …` metadata.
    #[error("missing bearer token")]
    Missing,
    /// The token is malformed, forged, expired, or from an unknown issuer.
    #[error("invalid token: {0}")]
    Invalid(Reason),
    /// An issuer's JWKS could not be loaded.
    #[error("issuer {issuer}: cannot load JWKS {path}: {problem}")]
    Jwks {
        /// Issuer URL.
        issuer: String,
        /// JWKS file or URL.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// mTLS is required and the connection has no client certificate.
    #[error("missing client certificate")]
    MissingCertificate,
    /// The client certificate breaks an X.509-SVID rule.
    #[error("client certificate refused: {0}")]
    Certificate(SvidError),
    /// The client CA bundle could not be loaded.
    #[error("client CA bundle {path}: {problem}")]
    ClientCa {
        /// The bundle file.
        path: String,
        /// What went wrong.
        problem: String,
    },
}

impl IdentityError {
    /// Why a token was refused, when it was.
    #[must_use]
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::Invalid(r) => Some(*r),
            _ => None,
        }
    }
}
