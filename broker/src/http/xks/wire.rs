//! The XKS proxy API's JSON: request bodies, the `requestMetadata`, and the error answer
//! `{"errorName": …, "errorMessage": …}` with the specified HTTP status (XKS spec, "Error
//! codes"). Base64 is standard with padding. Unknown fields are accepted (KMS may add
//! metadata); a missing or mistyped required field is a ValidationException.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use crate::api::REQUEST_ID_HEADER;

/// Largest request body read (a 8 KiB plaintext and 8 KiB AAD in base64, with metadata).
pub(super) const MAX_BODY: usize = 64 * 1024;
/// Largest plaintext (and ciphertext) accepted; the spec's minimum is 4300 bytes.
pub(super) const MAX_PLAINTEXT: usize = 8192;
/// Largest AAD accepted; the spec's minimum is 8192 bytes.
pub(super) const MAX_AAD: usize = 8192;
/// Largest `ciphertextMetadata` (the spec's limit).
pub(super) const MAX_METADATA: usize = 20;
/// Longest ARN the spec requires us to accept.
pub(super) const MAX_ARN: usize = 2048;
/// Longest other metadata string accepted.
const MAX_FIELD: usize = 512;

/// An XKS error answer. `message` is shown to the KMS caller's account (CloudWatch): short,
/// printable ASCII, never internal detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct XksError {
    pub(super) name: &'static str,
    pub(super) http: StatusCode,
    pub(super) code: tonic::Code,
    pub(super) message: &'static str,
}

const fn e(
    name: &'static str,
    http: StatusCode,
    code: tonic::Code,
    message: &'static str,
) -> XksError {
    XksError {
        name,
        http,
        code,
        message,
    }
}

impl XksError {
    pub(super) const fn validation(message: &'static str) -> Self {
        e(
            "ValidationException",
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            message,
        )
    }
    pub(super) const fn invalid_state(message: &'static str) -> Self {
        e(
            "InvalidStateException",
            StatusCode::BAD_REQUEST,
            tonic::Code::FailedPrecondition,
            message,
        )
    }
    pub(super) const fn invalid_ciphertext(message: &'static str) -> Self {
        e(
            "InvalidCiphertextException",
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            message,
        )
    }
    pub(super) const fn invalid_key_usage(message: &'static str) -> Self {
        e(
            "InvalidKeyUsageException",
            StatusCode::BAD_REQUEST,
            tonic::Code::FailedPrecondition,
            message,
        )
    }
    pub(super) const fn authentication(message: &'static str) -> Self {
        e(
            "AuthenticationFailedException",
            StatusCode::UNAUTHORIZED,
            tonic::Code::Unauthenticated,
            message,
        )
    }
    pub(super) const ACCESS_DENIED: Self = e(
        "AccessDeniedException",
        StatusCode::FORBIDDEN,
        tonic::Code::PermissionDenied,
        "access denied by the key broker's policy",
    );
    /// Not `POST` (the spec names no errorName for it; the status is 405).
    pub(super) const METHOD_NOT_ALLOWED: Self = e(
        "ValidationException",
        StatusCode::METHOD_NOT_ALLOWED,
        tonic::Code::InvalidArgument,
        "use POST",
    );
    pub(super) const KEY_NOT_FOUND: Self = e(
        "KeyNotFoundException",
        StatusCode::NOT_FOUND,
        tonic::Code::NotFound,
        "no such external key in this key store",
    );
    pub(super) const INVALID_URI_PATH: Self = e(
        "InvalidUriPathException",
        StatusCode::NOT_FOUND,
        tonic::Code::NotFound,
        "invalid URI path",
    );
    pub(super) const fn unsupported(message: &'static str) -> Self {
        e(
            "UnsupportedOperationException",
            StatusCode::NOT_IMPLEMENTED,
            tonic::Code::Unimplemented,
            message,
        )
    }
    pub(super) const fn internal(message: &'static str) -> Self {
        e(
            "InternalException",
            StatusCode::INTERNAL_SERVER_ERROR,
            tonic::Code::Internal,
            message,
        )
    }
    pub(super) const DEPENDENCY_TIMEOUT: Self = e(
        "DependencyTimeoutException",
        StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::Unavailable,
        "the HSM did not answer in time",
    );

    /// The JSON answer, with the request id.
    pub(super) fn response(&self, rid: Option<&str>) -> Response {
        let body = serde_json::json!({ "errorName": self.name, "errorMessage": self.message });
        let mut r = json(self.http, &body, rid);
        if self.http == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert(axum::http::header::ALLOW, HeaderValue::from_static("POST"));
        }
        r
    }

    /// This error as the status the audit recorder takes.
    pub(super) fn status(&self) -> tonic::Status {
        tonic::Status::new(self.code, format!("{}: {}", self.name, self.message))
    }
}

/// A JSON answer with `x-request-id`.
pub(super) fn json(status: StatusCode, body: &serde_json::Value, rid: Option<&str>) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    if let Some(v) = rid.and_then(|v| HeaderValue::from_str(v).ok()) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    r
}

/// `requestMetadata` (XKS spec, each operation and Appendix B). Every field is optional here;
/// which are required depends on the operation ([`RequestMetadata::check`]).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RequestMetadata {
    pub(super) aws_principal_arn: Option<String>,
    pub(super) kms_operation: Option<String>,
    pub(super) kms_request_id: Option<String>,
    pub(super) kms_key_arn: Option<String>,
    pub(super) kms_via_service: Option<String>,
    pub(super) aws_source_vpc: Option<String>,
    pub(super) aws_source_vpce: Option<String>,
}

impl RequestMetadata {
    /// Required fields present, every field within its limit. `key_op`: the operation names
    /// a key (principal required); `crypto`: it is encrypt or decrypt (`kmsKeyArn` required).
    pub(super) fn check(&self, key_op: bool, crypto: bool) -> Result<(), XksError> {
        let missing = XksError::validation("requestMetadata is missing a required field");
        let too_long = XksError::validation("a requestMetadata field is too long");
        if self.kms_request_id.is_none() || self.kms_operation.is_none() {
            return Err(missing);
        }
        if key_op && self.aws_principal_arn.is_none() {
            return Err(missing);
        }
        if crypto && self.kms_key_arn.is_none() {
            return Err(missing);
        }
        for (v, max) in [
            (&self.aws_principal_arn, MAX_ARN),
            (&self.kms_key_arn, MAX_ARN),
            (&self.kms_operation, MAX_FIELD),
            (&self.kms_request_id, MAX_FIELD),
            (&self.kms_via_service, MAX_FIELD),
            (&self.aws_source_vpc, MAX_FIELD),
            (&self.aws_source_vpce, MAX_FIELD),
        ] {
            if v.as_ref().is_some_and(|v| v.len() > max) {
                return Err(too_long);
            }
        }
        Ok(())
    }
}

/// Only the metadata (GetKeyMetadata, GetHealthStatus).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MetadataBody {
    pub(super) request_metadata: Option<RequestMetadata>,
}

/// Encrypt's body. The plaintext is zeroized when dropped.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EncryptBody {
    pub(super) request_metadata: Option<RequestMetadata>,
    /// Moved into a `Zeroizing` right after parsing.
    pub(super) plaintext: Option<String>,
    pub(super) encryption_algorithm: Option<String>,
    pub(super) additional_authenticated_data: Option<String>,
    pub(super) ciphertext_data_integrity_value_algorithm: Option<String>,
}

/// Decrypt's body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DecryptBody {
    pub(super) request_metadata: Option<RequestMetadata>,
    pub(super) ciphertext: Option<String>,
    pub(super) ciphertext_metadata: Option<String>,
    pub(super) encryption_algorithm: Option<String>,
    pub(super) additional_authenticated_data: Option<String>,
    pub(super) initialization_vector: Option<String>,
    pub(super) authentication_tag: Option<String>,
}

/// Base64 (standard, padded) of an optional field; absent or `""` is empty.
pub(super) fn b64(v: Option<&str>, what: &'static str) -> Result<Vec<u8>, XksError> {
    match v {
        None | Some("") => Ok(Vec::new()),
        Some(v) => STANDARD.decode(v).map_err(|_| XksError::validation(what)),
    }
}

/// Base64 of a required field: ValidationException `missing` when absent, `bad` when not
/// base64.
pub(super) fn required_b64(
    v: Option<String>,
    (missing, bad): (&'static str, &'static str),
) -> Result<Vec<u8>, XksError> {
    let v = v.ok_or(XksError::validation(missing))?;
    STANDARD.decode(v).map_err(|_| XksError::validation(bad))
}

/// `encryptionAlgorithm` must be `AES_GCM`.
pub(super) fn check_algorithm(v: Option<&str>) -> Result<(), XksError> {
    match v {
        Some("AES_GCM") => Ok(()),
        None => Err(XksError::validation("encryptionAlgorithm is required")),
        Some(_) => Err(XksError::validation("encryptionAlgorithm must be AES_GCM")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    #[test]
    fn unknown_metadata_fields_are_accepted_and_required_ones_checked() {
        let body: MetadataBody = serde_json::from_str(
            r#"{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Future","newField":1}}"#,
        )
        .unwrap();
        let m = body.request_metadata.unwrap();
        assert!(m.check(false, false).is_ok());
        assert_eq!(
            m.check(true, false).unwrap_err().name,
            "ValidationException"
        );
    }

    #[test]
    fn error_messages_are_short_printable_ascii() {
        for err in [
            XksError::validation("x"),
            XksError::ACCESS_DENIED,
            XksError::KEY_NOT_FOUND,
            XksError::INVALID_URI_PATH,
            XksError::DEPENDENCY_TIMEOUT,
        ] {
            assert!(err.message.len() < 512);
            assert!(err.message.bytes().all(|b| (0x20..0x7f).contains(&b)));
        }
    }

    #[test]
    fn base64_is_standard_padded() {
        assert_eq!(b64(Some("AQ=="), "x").unwrap(), [1]);
        assert!(b64(Some("AQ"), "x").is_err());
        assert!(b64(Some("-_8="), "x").is_err());
        assert!(b64(None, "x").unwrap().is_empty());
    }
}
