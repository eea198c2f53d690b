//! `Client`: a connected broker client. Every call carries a fresh `x-request-id` (uuid v4, or
//! `<prefix>-<n>` for a client made by `with_request_id_prefix`)
//! and, when a token file is configured, `authorization: Bearer <token>`; a gRPC error keeps
//! its code and request id. Data-key calls live here, key administration in `admin`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use keybroker_proto::v1 as pb;
use keybroker_proto::v1::data_keys_client::DataKeysClient;
use keybroker_proto::v1::key_admin_client::KeyAdminClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::retry::RetryPolicy;
use crate::token::TokenSource;
use crate::types::{DataKey, DecryptedKey, ReEncrypted, Wrapped, timestamp};
use crate::{ClientConfig, ClientError};

/// Metadata key of the request id, sent on every request and echoed by the broker.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A connected keybroker client. Cheap to clone (clones share the connection and token cache).
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel,
    token: Option<TokenSource>,
    retry: RetryPolicy,
    request_ids: Option<std::sync::Arc<RequestIds>>,
}

/// Request ids `<prefix>-<n>` for one tagged run of calls (see
/// [`Client::with_request_id_prefix`]).
#[derive(Debug)]
struct RequestIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

/// Longest request id prefix: the broker accepts ids up to 64 characters, and `-<n>` (up to 21)
/// must fit.
pub const MAX_REQUEST_ID_PREFIX: usize = 43;

impl Client {
    /// Connects to the broker described by `cfg`. The token file, when configured, is read
    /// once here so that a missing file is reported before the first call.
    ///
    /// # Errors
    /// `Config`/`ConfigFile` for an unusable configuration (refused `http://`, missing CA,
    /// unreadable certificate or key file), `TokenFile`/`InvalidToken` for the token file,
    /// `Transport` when the connection cannot be set up.
    pub async fn connect(cfg: ClientConfig) -> Result<Self, ClientError> {
        let token = cfg.token_file.clone().map(TokenSource::new);
        if let Some(token) = &token {
            token.token().await?;
        }
        let channel = cfg.channel().await?;
        Ok(Self {
            channel,
            token,
            retry: cfg.retry,
            request_ids: None,
        })
    }

    /// A client whose channel connects on first use to a port nothing listens on: for unit
    /// tests that never reach the network.
    #[cfg(test)]
    pub(crate) fn unconnected() -> Self {
        Self {
            channel: Channel::from_static("http://127.0.0.1:9").connect_lazy(),
            token: None,
            retry: RetryPolicy::none(),
            request_ids: None,
        }
    }

    /// The same client with another retry policy (e.g. [`RetryPolicy::none`] for a caller that
    /// runs its own retry loop).
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// A client (sharing this one's connection and token) whose calls carry the request ids
    /// `<prefix>-0`, `<prefix>-1`, … instead of random ones, so that their audit records can be
    /// found again (drill reports name the audit indices of their calls). Clones share the
    /// counter.
    ///
    /// # Errors
    /// `Config` when `prefix` is empty, longer than [`MAX_REQUEST_ID_PREFIX`] or not made of
    /// `[A-Za-z0-9_-]`.
    pub fn with_request_id_prefix(&self, prefix: &str) -> Result<Self, ClientError> {
        if prefix.is_empty()
            || prefix.len() > MAX_REQUEST_ID_PREFIX
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ClientError::Config(format!(
                "request id prefix must be 1-{MAX_REQUEST_ID_PREFIX} of [A-Za-z0-9_-]"
            )));
        }
        Ok(Self {
            request_ids: Some(std::sync::Arc::new(RequestIds {
                prefix: prefix.to_owned(),
                next: std::sync::atomic::AtomicU64::new(0),
            })),
            ..self.clone()
        })
    }

    /// The request id the next call will carry, when ids are prefixed; calls made after this
    /// one returned get later ids.
    #[must_use]
    pub fn next_request_id(&self) -> Option<String> {
        self.request_ids.as_ref().map(|r| {
            format!(
                "{}-{}",
                r.prefix,
                r.next.load(std::sync::atomic::Ordering::SeqCst)
            )
        })
    }

    /// Wraps `msg` in a request with a fresh request id and the current bearer token.
    pub(crate) async fn request<T>(
        &self,
        msg: T,
    ) -> Result<(tonic::Request<T>, String), ClientError> {
        let request_id = self.new_request_id();
        let req = self.request_with_id(msg, &request_id).await?;
        Ok((req, request_id))
    }

    /// Sends `msg` through `send` under the client's retry policy (see `retry`): every attempt
    /// re-reads the token (it may have been rotated meanwhile) and carries the same request id,
    /// so the broker's audit records of the attempts can be matched. Returns the response
    /// message.
    pub(crate) async fn call<M, R, F, Fut>(
        &self,
        idempotent: bool,
        msg: &M,
        send: F,
    ) -> Result<(R, String), ClientError>
    where
        M: Clone,
        F: Fn(tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let rid = self.new_request_id();
        let resp = self
            .retry
            .run(idempotent, |_attempt| async {
                let req = self.request_with_id(msg.clone(), &rid).await?;
                send(req)
                    .await
                    .map_err(|s| ClientError::from_status(&s, &rid))
            })
            .await?;
        Ok((resp.into_inner(), rid))
    }

    /// The next request id: `<prefix>-<n>` when prefixed, else a random uuid.
    fn new_request_id(&self) -> String {
        match &self.request_ids {
            Some(r) => format!(
                "{}-{}",
                r.prefix,
                r.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            ),
            None => uuid::Uuid::new_v4().to_string(),
        }
    }

    async fn request_with_id<T>(
        &self,
        msg: T,
        request_id: &str,
    ) -> Result<tonic::Request<T>, ClientError> {
        let mut req = tonic::Request::new(msg);
        let rid: AsciiMetadataValue = MetadataValue::try_from(request_id)
            .map_err(|_| ClientError::Config("request id is not a valid header value".into()))?;
        req.metadata_mut().insert(REQUEST_ID_HEADER, rid);
        if let Some(source) = &self.token {
            let token = source.token().await?;
            let header = Zeroizing::new(format!("Bearer {}", token.as_str()));
            let mut value: AsciiMetadataValue =
                MetadataValue::try_from(header.as_str()).map_err(|_| {
                    ClientError::InvalidToken {
                        path: source.path().to_path_buf(),
                        problem: "is not a valid header value",
                    }
                })?;
            value.set_sensitive(true);
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn data_keys(&self) -> DataKeysClient<Channel> {
        DataKeysClient::new(self.channel.clone())
    }

    pub(crate) fn key_admin(&self) -> KeyAdminClient<Channel> {
        KeyAdminClient::new(self.channel.clone())
    }

    /// Generates a data key under `key`'s newest enabled version, bound to `context`.
    /// `ttl` asks for a lease length (capped by the broker; `None` = broker default, 15 min).
    ///
    /// # Errors
    /// `Status` with the broker's code (`PERMISSION_DENIED` also for an unknown key,
    /// `FAILED_PRECONDITION` for a disabled key, `UNAVAILABLE` when retryable), token-file
    /// errors, `Config` for a `ttl` too large to send, `MalformedResponse` without a lease.
    pub async fn generate_data_key(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
        ttl: Option<Duration>,
    ) -> Result<DataKey, ClientError> {
        let msg = pb::GenerateDataKeyRequest {
            key: key.to_owned(),
            context: to_map(context),
            ttl: ttl.map(to_pb_duration).transpose()?,
            recipient: None,
        };
        // Not idempotent: every call mints a new key and counts a wrap against the version.
        let (resp, rid) = self
            .call(false, &msg, |req| async {
                self.data_keys().generate_data_key(req).await
            })
            .await?;
        let plaintext = Zeroizing::new(resp.plaintext);
        let (lease_id, expires_at, lease_ttl) = lease(resp.lease, &rid)?;
        Ok(DataKey {
            plaintext,
            ciphertext: resp.ciphertext,
            key_version: resp.key_version,
            lease_id,
            expires_at,
            lease_ttl,
        })
    }

    /// Generates a data key and returns only its wrapped copy (no plaintext, no lease).
    ///
    /// # Errors
    /// As [`Client::generate_data_key`].
    pub async fn generate_data_key_without_plaintext(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<Wrapped, ClientError> {
        let msg = pb::GenerateDataKeyWithoutPlaintextRequest {
            key: key.to_owned(),
            context: to_map(context),
        };
        let (resp, _rid) = self
            .call(false, &msg, |req| async {
                self.data_keys()
                    .generate_data_key_without_plaintext(req)
                    .await
            })
            .await?;
        Ok(Wrapped {
            ciphertext: resp.ciphertext,
            key_version: resp.key_version,
        })
    }

    /// Opens `ciphertext` (from `generate_data_key` or `encrypt`) given the same `context`.
    ///
    /// # Errors
    /// `Status` with the broker's code (`INVALID_ARGUMENT` for a malformed ciphertext,
    /// `PERMISSION_DENIED` for a wrong context or policy denial, `FAILED_PRECONDITION` for a
    /// disabled key or too-old version), token-file errors, `MalformedResponse` without a lease.
    pub async fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
        ttl: Option<Duration>,
    ) -> Result<DecryptedKey, ClientError> {
        let msg = pb::DecryptRequest {
            ciphertext: ciphertext.to_vec(),
            context: to_map(context),
            ttl: ttl.map(to_pb_duration).transpose()?,
            recipient: None,
        };
        // Idempotent: opening the same wrapped key gives the same plaintext.
        let (resp, rid) = self
            .call(true, &msg, |req| async {
                self.data_keys().decrypt(req).await
            })
            .await?;
        let plaintext = Zeroizing::new(resp.plaintext);
        let (lease_id, expires_at, lease_ttl) = lease(resp.lease, &rid)?;
        Ok(DecryptedKey {
            plaintext,
            key: resp.key,
            key_version: resp.key_version,
            lease_id,
            expires_at,
            lease_ttl,
        })
    }

    /// Encrypts a small payload (1 byte to 64 KiB) under a SEAL key.
    ///
    /// # Errors
    /// `Status` with the broker's code (`INVALID_ARGUMENT` for an empty or too large payload or
    /// a non-SEAL key), token-file errors.
    pub async fn encrypt(
        &self,
        key: &str,
        plaintext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Wrapped, ClientError> {
        let msg = pb::EncryptRequest {
            key: key.to_owned(),
            plaintext: plaintext.to_vec(),
            context: to_map(context),
        };
        // The request owns a copy of the plaintext; it is consumed by the call and cannot be
        // zeroized afterwards (prost owns the buffer), so keep payloads small.
        let (resp, _rid) = self
            .call(false, &msg, |req| async {
                self.data_keys().encrypt(req).await
            })
            .await?;
        Ok(Wrapped {
            ciphertext: resp.ciphertext,
            key_version: resp.key_version,
        })
    }

    /// Re-wraps `ciphertext` under its key's newest enabled version; the plaintext never leaves
    /// the broker.
    ///
    /// # Errors
    /// As [`Client::decrypt`].
    pub async fn re_encrypt(
        &self,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<ReEncrypted, ClientError> {
        let msg = pb::ReEncryptRequest {
            ciphertext: ciphertext.to_vec(),
            context: to_map(context),
        };
        // Idempotent in effect: the same plaintext re-wrapped; a repeat only wraps it again.
        let (resp, _rid) = self
            .call(true, &msg, |req| async {
                self.data_keys().re_encrypt(req).await
            })
            .await?;
        Ok(ReEncrypted {
            ciphertext: resp.ciphertext,
            key: resp.key,
            source_key_version: resp.source_key_version,
            key_version: resp.key_version,
        })
    }
}

/// The encryption context as the generated message wants it.
pub(crate) fn to_map(context: &BTreeMap<String, String>) -> HashMap<String, String> {
    context
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A std duration as a protobuf duration.
pub(crate) fn to_pb_duration(d: Duration) -> Result<prost_types::Duration, ClientError> {
    prost_types::Duration::try_from(d)
        .map_err(|_| ClientError::Config(format!("duration {d:?} is too large")))
}

/// Lease id, expiry and length of a response; a release of plaintext without a lease is
/// malformed.
pub(crate) fn lease(
    lease: Option<pb::Lease>,
    request_id: &str,
) -> Result<(String, Option<time::OffsetDateTime>, Option<Duration>), ClientError> {
    let lease = lease.ok_or_else(|| ClientError::MalformedResponse {
        problem: "plaintext released without a lease",
        request_id: request_id.to_owned(),
    })?;
    let ttl = (lease.ttl_seconds > 0).then(|| Duration::from_secs(lease.ttl_seconds.into()));
    Ok((lease.lease_id, lease.expires_at.and_then(timestamp), ttl))
}
