//! The one place where internal errors become gRPC statuses (DESIGN §4).
//!
//! The detail is logged server-side with the request id; the caller gets a code and a short,
//! safe message. Unknown keys answer PERMISSION_DENIED like forbidden ones, so names do not leak.

use tonic::{Code, Status};

use crate::audit::AuditError;
use crate::hsm::HsmErrorKind;
use crate::identity::IdentityError;
use crate::keys::KeyError;

use super::RequestId;

/// Maps a key-operation error to a status, logging what the caller does not see.
pub(crate) fn key_error(err: &KeyError, rid: &RequestId) -> Status {
    let (code, msg) = match err {
        KeyError::Input(_) | KeyError::Envelope(_) | KeyError::Invalid(_) => {
            (Code::InvalidArgument, err.to_string())
        }
        KeyError::DecryptFailed => (Code::InvalidArgument, err.to_string()),
        KeyError::NotFound => (Code::PermissionDenied, "permission denied".to_owned()),
        KeyError::Residency(_) => (Code::PermissionDenied, err.to_string()),
        // The caller, not the key, is refused: a policy-like denial (DESIGN §4), so a job can
        // tell "my job was torn down" from "the key was disabled" (FAILED_PRECONDITION).
        KeyError::Revoked => (Code::PermissionDenied, err.to_string()),
        KeyError::Precondition(_) => (Code::FailedPrecondition, err.to_string()),
        KeyError::AlreadyExists(_) => (Code::AlreadyExists, err.to_string()),
        KeyError::Conflict(_) => (Code::Aborted, err.to_string()),
        KeyError::Hsm(h) => match h.kind() {
            HsmErrorKind::Caller => (
                Code::InvalidArgument,
                "the HSM refused the request".to_owned(),
            ),
            HsmErrorKind::BrokenSession | HsmErrorKind::DeviceGone => {
                (Code::Unavailable, "HSM unavailable; retry later".to_owned())
            }
        },
        KeyError::SelfCheck => (Code::Internal, err.to_string()),
        KeyError::Store(_) => (
            Code::Unavailable,
            "key catalog unavailable; retry later".to_owned(),
        ),
    };
    if matches!(code, Code::Unavailable | Code::Internal) {
        tracing::error!(request_id = %rid, error = ?err, "key operation failed");
    } else {
        tracing::info!(request_id = %rid, code = ?code, error = %err, "key operation refused");
    }
    rid.status(code, msg)
}

/// Maps an identity error. The reason goes to the server log only: telling a forger which
/// check failed would help the next attempt, so the caller learns just "invalid token".
pub(crate) fn identity_error(err: &IdentityError, rid: &RequestId) -> Status {
    tracing::info!(request_id = %rid, error = %err, "unauthenticated request");
    rid.status(Code::Unauthenticated, identity_message(err).to_owned())
}

fn identity_message(err: &IdentityError) -> &'static str {
    match err {
        IdentityError::Missing => "missing bearer token (authorization: Bearer <JWT>)",
        IdentityError::Jwks { .. } => "token verification unavailable",
        IdentityError::Invalid(_) => "invalid token",
        IdentityError::MissingCertificate => "missing client certificate",
        IdentityError::Certificate(_) => "invalid client certificate",
        IdentityError::ClientCa { .. } => "client certificate verification unavailable",
    }
}

/// Maps a validation error found at the edge.
pub(crate) fn invalid(msg: impl Into<String>, rid: &RequestId) -> Status {
    rid.status(Code::InvalidArgument, msg.into())
}

/// Maps an audit-log failure: the operation is refused, whatever it would have returned.
pub(crate) fn audit_error(err: &AuditError, rid: &RequestId) -> Status {
    if let AuditError::GateClosed { revoked } = err {
        return if *revoked {
            rid.status(
                Code::PermissionDenied,
                crate::keys::KeyError::Revoked.to_string(),
            )
        } else {
            rid.status(
                Code::FailedPrecondition,
                crate::audit::GATE_CLOSED_REASON.to_owned(),
            )
        };
    }
    tracing::error!(request_id = %rid, error = %err, "audit append failed: refusing the operation");
    rid.status(Code::Unavailable, "audit log unavailable".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Reason;

    #[test]
    fn identity_rejections_tell_the_caller_only_invalid_token() {
        let rid = RequestId("r-1".to_owned());
        for reason in [Reason::BadSignature, Reason::Expired, Reason::UnknownKid] {
            let s = identity_error(&IdentityError::Invalid(reason), &rid);
            assert_eq!(s.code(), Code::Unauthenticated);
            assert_eq!(s.message(), "invalid token");
        }
    }
}
