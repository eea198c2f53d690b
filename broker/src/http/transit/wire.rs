//! What the transit endpoint reads and writes on the wire: the bounded request body, the
//! `vault:v<N>:<base64>` ciphertext text, `{"errors": […]}` answers and the gRPC → HTTP code
//! map. Pure or nearly so, so each rule is tested on its own.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::api::REQUEST_ID_HEADER;
use crate::keys::envelope::{Envelope, MAX_ENVELOPE_LEN};

/// Largest request body: a base64 SEAL plaintext of 64 KiB plus JSON.
pub(super) const MAX_BODY: usize = 128 * 1024;
/// A body over [`MAX_BODY`] is still read (and dropped) up to this size, so the 413 is sent
/// after the client has finished sending: answering mid-upload makes HTTP/2 reset the stream
/// (and HTTP/1.1 close the connection), and clients then report the reset, not the 413.
const DRAIN_MAX: usize = 4 * 1024 * 1024;
/// How long a too-large body may take to drain before the 413 goes out anyway.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the endpoint refused a request before the API saw it: the HTTP answer, the gRPC code
/// the audit record carries, and a fixed message (safe to return and to record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) http: StatusCode,
    pub(super) code: Code,
    pub(super) message: &'static str,
}

impl Refusal {
    /// A caller error answered 400 (INVALID_ARGUMENT in the record).
    pub(super) const fn bad(message: &'static str) -> Self {
        Self {
            http: StatusCode::BAD_REQUEST,
            code: Code::InvalidArgument,
            message,
        }
    }

    /// The body is over [`MAX_BODY`]: 413 (RESOURCE_EXHAUSTED in the record).
    pub(super) const TOO_LARGE: Self = Self {
        http: StatusCode::PAYLOAD_TOO_LARGE,
        code: Code::ResourceExhausted,
        message: "request body larger than 128 KiB",
    };

    /// Not PUT or POST: 405 (INVALID_ARGUMENT in the record).
    pub(super) const METHOD: Self = Self {
        http: StatusCode::METHOD_NOT_ALLOWED,
        code: Code::InvalidArgument,
        message: "use PUT or POST",
    };
}

/// The request body, at most [`MAX_BODY`] bytes; a larger one is drained (bounded by
/// [`DRAIN_MAX`] and [`DRAIN_TIME`]) and refused.
pub(super) async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, Refusal> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_MAX as u64) {
        // Not worth reading: answer now, whatever the transport makes of it.
        return Err(Refusal::TOO_LARGE);
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Refusal::bad("request body could not be read"))?;
        if buf.len() + chunk.len() > MAX_BODY {
            let mut seen = buf.len() + chunk.len();
            let drain = async {
                while let Some(Ok(more)) = stream.next().await {
                    seen += more.len();
                    if seen > DRAIN_MAX {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            return Err(Refusal::TOO_LARGE);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// `vault:v<N>:<base64 envelope>` for key `key` → the envelope bytes. The version in the text
/// and the key and version inside the envelope must agree with the URL.
pub(super) fn parse_ciphertext(text: &str, key: &str) -> Result<Vec<u8>, &'static str> {
    let mut parts = text.split(':');
    let (Some(prefix), Some(version), Some(b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("ciphertext must be vault:v<N>:<base64>");
    };
    if prefix != "vault" {
        return Err("ciphertext must start with vault:");
    }
    let version: u32 = version
        .strip_prefix('v')
        .filter(|d| !d.is_empty() && d.len() <= 10 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .filter(|v| *v >= 1)
        .ok_or("ciphertext version must be v<N>")?;
    if b64.len() > MAX_ENVELOPE_LEN.div_ceil(3) * 4 {
        return Err("ciphertext too large");
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| "ciphertext is not base64")?;
    let env = Envelope::parse(&bytes).map_err(|_| "ciphertext is malformed")?;
    if env.key.as_str() != key {
        return Err("ciphertext was not made with this key");
    }
    if env.version != version {
        return Err("ciphertext version does not match its envelope");
    }
    Ok(bytes)
}

/// The caller's request id header, if it is well formed (echoed on early errors).
pub(super) fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
}

pub(super) fn response_rid(m: &tonic::metadata::MetadataMap) -> Option<String> {
    m.get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub(super) fn ok(body: &serde_json::Value, rid: Option<String>) -> Response {
    with_rid((StatusCode::OK, axum::Json(body)).into_response(), rid)
}

/// `{"errors": [msg]}` with `code`, as Vault answers.
pub(super) fn error(code: StatusCode, msg: &str, rid: Option<String>) -> Response {
    let body = serde_json::json!({ "errors": [msg] });
    with_rid((code, axum::Json(body)).into_response(), rid)
}

fn with_rid(mut r: Response, rid: Option<String>) -> Response {
    if let Some(v) = rid.and_then(|v| HeaderValue::from_str(&v).ok()) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    r
}

/// gRPC status → HTTP: 4xx for what the caller must change, 5xx only for what a retry can fix.
pub(super) fn http_code(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated | Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(super) fn from_status(status: &tonic::Status) -> Response {
    // Status messages are safe by construction (api/status.rs): no secrets, no key names of
    // keys the caller may not see.
    error(
        http_code(status.code()),
        status.message(),
        response_rid(status.metadata()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;
    use crate::keys::name::KeyName;

    fn envelope(key: &str, version: u32) -> Vec<u8> {
        Envelope {
            key: KeyName::parse(key).unwrap(),
            version,
            iv: [7; 12],
            sealed: vec![1; 32],
        }
        .encode()
    }

    #[test]
    fn ciphertext_parsing_accepts_exactly_our_shape() {
        let env = envelope("seal/bao", 3);
        let text = format!("vault:v3:{}", STANDARD.encode(&env));
        assert_eq!(parse_ciphertext(&text, "seal/bao").unwrap(), env);
        let b64 = STANDARD.encode(&env);
        for (bad, why) in [
            (format!("vault:{b64}"), "two parts"),
            (format!("vault:v3:{b64}:x"), "four parts"),
            (format!("other:v3:{b64}"), "prefix"),
            (format!("vault:3:{b64}"), "no v"),
            (format!("vault:v:{b64}"), "empty version"),
            (format!("vault:v0:{b64}"), "version 0"),
            (format!("vault:v4:{b64}"), "version differs from envelope"),
            (format!("vault:v99999999999:{b64}"), "version overflow"),
            ("vault:v3:not base64!".to_owned(), "bad base64"),
            (
                format!("vault:v3:{}", STANDARD.encode(b"KBgarbage")),
                "not an envelope",
            ),
            (
                format!("vault:v3:{}", STANDARD.encode(envelope("seal/other", 3))),
                "other key",
            ),
            (format!("vault:v3:{}", "A".repeat(1 << 20)), "oversized"),
        ] {
            assert!(parse_ciphertext(&bad, "seal/bao").is_err(), "{why}");
        }
    }

    #[test]
    fn retryable_codes_and_only_those_are_5xx() {
        for c in [Code::Unavailable, Code::DeadlineExceeded, Code::Aborted] {
            assert_eq!(http_code(c), StatusCode::SERVICE_UNAVAILABLE);
        }
        for c in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::FailedPrecondition,
            Code::NotFound,
            Code::ResourceExhausted,
        ] {
            assert!(http_code(c).is_client_error(), "{c:?}");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_drained_then_refused_and_one_at_the_limit_is_read() {
        let at = Body::from(vec![b'a'; MAX_BODY]);
        assert_eq!(
            read_body(&HeaderMap::new(), at).await.unwrap().len(),
            MAX_BODY
        );
        // Streamed in pieces, as HTTP/2 DATA frames arrive: every piece is consumed.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
        let sent = tokio::spawn(async move {
            for _ in 0..50 {
                if tx.send(Ok(Bytes::from(vec![b'a'; 4096]))).await.is_err() {
                    return false;
                }
            }
            true
        });
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        assert_eq!(
            read_body(&HeaderMap::new(), body).await,
            Err(Refusal::TOO_LARGE)
        );
        assert!(
            sent.await.unwrap(),
            "the whole 200 KiB was read before the 413"
        );
        let mut huge = HeaderMap::new();
        huge.insert(
            axum::http::header::CONTENT_LENGTH,
            HeaderValue::from_static("1000000000"),
        );
        assert_eq!(
            read_body(&huge, Body::empty()).await,
            Err(Refusal::TOO_LARGE)
        );
    }
}
