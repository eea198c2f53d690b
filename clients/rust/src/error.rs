//! `ClientError`: everything the client library can fail with. Kept in one enum so callers can
//! match on the gRPC code (and retry only what is retryable) without parsing strings. No
//! variant ever carries a token or key material.

use std::path::PathBuf;

/// An error from the keybroker client library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client configuration is unusable (bad endpoint, plain http refused, missing CA, …).
    #[error("client configuration: {0}")]
    Config(String),

    /// A configured file (CA, client certificate, client key) could not be read.
    #[error("cannot read {what} file {}: {source}", path.display())]
    ConfigFile {
        /// Which file this is: "CA", "client certificate", "client key".
        what: &'static str,
        /// The path as configured.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The token file could not be read (missing, unreadable).
    #[error("cannot read token file {}: {source}", path.display())]
    TokenFile {
        /// The path as configured.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The token file was read but its content cannot be sent (empty, or not a valid header
    /// value). The token itself is never included.
    #[error("token file {} {problem}", path.display())]
    InvalidToken {
        /// The path as configured.
        path: PathBuf,
        /// What is wrong, e.g. "is empty".
        problem: &'static str,
    },

    /// Connecting to the broker failed (DNS, TCP, TLS handshake, …).
    #[error("broker connection: {0}")]
    Transport(#[from] tonic::transport::Error),

    /// The broker answered with a gRPC error.
    #[error("{message} (code: {}, request id: {request_id})", code_name(*code))]
    Status {
        /// The gRPC status code, as the broker sent it.
        code: tonic::Code,
        /// The broker's message (never holds secrets, by the broker's contract).
        message: String,
        /// The request id: the broker's `x-request-id` when it sent one, else the one we sent.
        request_id: String,
    },

    /// An encrypted file could not be set up (header out of bounds, no randomness).
    #[error(transparent)]
    File(#[from] crate::file::FileFormatError),

    /// The broker answered, but the response is malformed (e.g. a missing lease).
    #[error("malformed response from broker: {problem} (request id: {request_id})")]
    MalformedResponse {
        /// What was wrong with it.
        problem: &'static str,
        /// The request id of the call.
        request_id: String,
    },

    /// A data key released to our recipient key does not open with it (another call's key,
    /// or a tampered response). Never holds key bytes.
    #[error("cannot open the released data key: {source} (request id: {request_id})")]
    Release {
        /// Why it does not open.
        #[source]
        source: crate::release::ReleaseError,
        /// The request id of the call.
        request_id: String,
    },
}

impl ClientError {
    /// True when the same request may succeed if retried later, whatever the call:
    /// `UNAVAILABLE` (HSM or audit log temporarily unable to serve, broker restarting) and
    /// `RESOURCE_EXHAUSTED` (a limit refused it before any work). `DEADLINE_EXCEEDED` is
    /// retryable only for idempotent calls: see [`crate::retry::retryable`].
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        crate::retry::retryable(self, false)
    }

    /// The gRPC status code, for `Status` errors.
    #[must_use]
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The request id, for errors that belong to a request.
    #[must_use]
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Status { request_id, .. }
            | Self::MalformedResponse { request_id, .. }
            | Self::Release { request_id, .. } => Some(request_id),
            _ => None,
        }
    }

    /// Builds a `Status` error from a tonic status, preferring the broker's request id (from
    /// the status metadata) over `sent_request_id`.
    pub(crate) fn from_status(status: &tonic::Status, sent_request_id: &str) -> Self {
        let request_id = status
            .metadata()
            .get(crate::REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(sent_request_id)
            .to_owned();
        Self::Status {
            code: status.code(),
            message: status.message().to_owned(),
            request_id,
        }
    }
}

/// The canonical upper-case name of a gRPC code, e.g. `PERMISSION_DENIED`.
#[must_use]
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_and_resource_exhausted_are_retryable() {
        let mk = |code| ClientError::Status {
            code,
            message: String::new(),
            request_id: "r".into(),
        };
        assert!(mk(tonic::Code::Unavailable).is_retryable());
        assert!(!mk(tonic::Code::PermissionDenied).is_retryable());
        assert!(mk(tonic::Code::ResourceExhausted).is_retryable());
        assert!(!mk(tonic::Code::DeadlineExceeded).is_retryable());
        assert!(!ClientError::Config("x".into()).is_retryable());
    }

    #[test]
    fn status_prefers_broker_request_id() {
        let mut status = tonic::Status::permission_denied("denied by policy");
        status.metadata_mut().insert(
            crate::REQUEST_ID_HEADER,
            tonic::metadata::MetadataValue::from_static("srv-1"),
        );
        let err = ClientError::from_status(&status, "sent-1");
        assert_eq!(err.request_id(), Some("srv-1"));
        assert_eq!(
            err.to_string(),
            "denied by policy (code: PERMISSION_DENIED, request id: srv-1)"
        );

        let err = ClientError::from_status(&tonic::Status::unavailable("hsm down"), "sent-2");
        assert_eq!(err.request_id(), Some("sent-2"));
        assert!(err.is_retryable());
    }
}
