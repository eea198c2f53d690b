//! The XKS key operations (GetKeyMetadata, Encrypt, Decrypt): each runs inside the API's
//! audit recorder, so the record — granted or refused, with what KMS said — is durable
//! before the answer leaves.

use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::api::audit::Recorder;
use crate::api::{ApiState, CallContext, PreAuthenticated};
use crate::audit::{Op, Surface, XksFacts};
use crate::config::XksStoreConfig;
use crate::identity::Principal;
use crate::keys::KeyError;
use crate::keys::name::KeyName;
use crate::keys::xks::{TAG_LEN, XksCiphertext, XksUsage, is_xks_key_id};
use crate::policy::{Action, XksRequestFacts};
use crate::store::{KeyRecord, KeyState, Purpose};

use super::wire::{
    self, DecryptBody, EncryptBody, MetadataBody, RequestMetadata, XksError, b64, check_algorithm,
    required_b64,
};

/// How long a key operation may take before it answers DependencyTimeoutException (KMS gives
/// up after 250 ms; past that an answer only matters for the audit record).
const WORK_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// A key operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyOp {
    Metadata,
    Encrypt,
    Decrypt,
}

impl KeyOp {
    fn audit_op(self) -> Op {
        self.action().into()
    }

    fn action(self) -> Action {
        match self {
            Self::Metadata => Action::XksGetKeyMetadata,
            Self::Encrypt => Action::XksEncrypt,
            Self::Decrypt => Action::XksDecrypt,
        }
    }
}

/// One authenticated-or-not XKS request.
pub(super) struct Call<'a> {
    pub(super) state: &'a std::sync::Arc<ApiState>,
    pub(super) store: &'a XksStoreConfig,
    pub(super) principal: &'a Principal,
    /// The access key id that signed, or why the signature was refused.
    pub(super) auth: Result<String, &'static str>,
    pub(super) body: &'a [u8],
    /// A refusal of this edge before the operation (method, body size).
    pub(super) early: Option<XksError>,
}

/// The metadata of a body that may not parse (for the record of its refusal).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Lenient {
    request_metadata: Option<RequestMetadata>,
}

/// A key call's body, parsed once for its operation.
enum Body {
    Metadata(MetadataBody),
    Encrypt(EncryptBody),
    Decrypt(DecryptBody),
}

impl Body {
    /// `None` when the bytes are not the operation's JSON shape.
    fn parse(op: KeyOp, bytes: &[u8]) -> Option<Self> {
        match op {
            KeyOp::Metadata => serde_json::from_slice(bytes).ok().map(Self::Metadata),
            KeyOp::Encrypt => serde_json::from_slice(bytes).ok().map(Self::Encrypt),
            KeyOp::Decrypt => serde_json::from_slice(bytes).ok().map(Self::Decrypt),
        }
    }

    fn metadata(&self) -> Option<&RequestMetadata> {
        match self {
            Self::Metadata(b) => b.request_metadata.as_ref(),
            Self::Encrypt(b) => b.request_metadata.as_ref(),
            Self::Decrypt(b) => b.request_metadata.as_ref(),
        }
    }
}

/// `requestMetadata`, present and within the spec's rules (`key_op`, `crypto`: see
/// [`RequestMetadata::check`]).
fn required_metadata(
    m: Option<RequestMetadata>,
    key_op: bool,
    crypto: bool,
) -> Result<RequestMetadata, XksError> {
    let m = m.ok_or(XksError::validation("requestMetadata is required"))?;
    m.check(key_op, crypto)?;
    Ok(m)
}

impl Call<'_> {
    /// Runs `op` on `key` and answers, through the audit recorder.
    pub(super) async fn key_op(self, op: KeyOp, key: &str) -> Response {
        let body = Body::parse(op, self.body);
        // What KMS said, for the record even of a refused call; a body of the wrong shape is
        // read again for its metadata alone.
        let lenient;
        let meta = match body.as_ref().and_then(Body::metadata) {
            Some(m) => m,
            None => {
                lenient = serde_json::from_slice::<Lenient>(self.body)
                    .ok()
                    .and_then(|l| l.request_metadata)
                    .unwrap_or_default();
                &lenient
            }
        };
        let rid = meta.kms_request_id.clone();
        let mut rec = self.state.recorder(op.audit_op());
        rec.surface(Surface::Xks);
        rec.xks(self.facts(meta, None));
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(PreAuthenticated(
            self.auth.clone().map(|_| self.principal.clone()),
        ));
        if let Some(id) = rid
            .as_deref()
            .and_then(|v| tonic::metadata::MetadataValue::try_from(v).ok())
        {
            // Used as the record's request id when well-formed (KMS sends a UUID).
            req.metadata_mut().insert(crate::api::REQUEST_ID_HEADER, id);
        }
        let mut refused: Option<XksError> = None;
        let result = match (rec.begin(self.state, &req).await, self.early) {
            (Err(status), _) => {
                refused = Some(XksError::authentication("request signature is not valid"));
                Err(status)
            }
            (Ok(call), Some(e)) => {
                if let Ok(name) = KeyName::parse(key) {
                    rec.key(name.as_str());
                }
                refused = Some(e);
                Err(call
                    .rid
                    .status(e.code, format!("{}: {}", e.name, e.message)))
            }
            (Ok(call), None) => {
                let work = self.run(body, key, &call, &mut rec);
                match tokio::time::timeout(WORK_BUDGET, work).await {
                    Ok(Ok(body)) => Ok(call.rid.response(body)),
                    Ok(Err((e, detail))) => {
                        refused = Some(e);
                        Err(call.rid.status(e.code, format!("{}: {detail}", e.name)))
                    }
                    Err(_) => {
                        refused = Some(XksError::DEPENDENCY_TIMEOUT);
                        Err(XksError::DEPENDENCY_TIMEOUT.status())
                    }
                }
            }
        };
        match (rec.finish(result).await, refused) {
            (Ok(r), _) => wire::json(StatusCode::OK, r.get_ref(), rid.as_deref()),
            (Err(s), Some(e)) if s.code() == e.code => e.response(rid.as_deref()),
            (Err(s), _) if s.code() == tonic::Code::InvalidArgument => {
                XksError::validation("request too large to record in the audit log")
                    .response(rid.as_deref())
            }
            (Err(_), _) => XksError::internal("the key broker could not record the request")
                .response(rid.as_deref()),
        }
    }

    /// What goes into the audit record's `xks` field.
    fn facts(&self, m: &RequestMetadata, aad: Option<&[u8]>) -> XksFacts {
        let cut = |v: &Option<String>| v.as_deref().map(crate::audit::record::bound_identity);
        XksFacts {
            key_store: self.store.uri_prefix.clone(),
            access_key_id: self.auth.as_ref().ok().cloned(),
            kms_request_id: cut(&m.kms_request_id),
            kms_operation: cut(&m.kms_operation),
            aws_principal_arn: cut(&m.aws_principal_arn),
            kms_key_arn: cut(&m.kms_key_arn),
            kms_via_service: cut(&m.kms_via_service),
            aws_source_vpc: cut(&m.aws_source_vpc),
            aws_source_vpce: cut(&m.aws_source_vpce),
            aad_len: aad.map(|a| u32::try_from(a.len()).unwrap_or(u32::MAX)),
            aad_sha256: aad
                .filter(|a| !a.is_empty())
                .map(|a| hex::encode(Sha256::digest(a))),
        }
    }

    /// The operation's work; a refusal carries the safe error and a detail for the record.
    async fn run(
        &self,
        body: Option<Body>,
        key: &str,
        call: &CallContext,
        rec: &mut Recorder,
    ) -> Result<serde_json::Value, (XksError, String)> {
        let plain = |e: XksError| (e, e.message.to_owned());
        match body.ok_or_else(|| plain(XksError::validation("body is not valid JSON")))? {
            Body::Metadata(body) => {
                let m = required_metadata(body.request_metadata, true, false).map_err(plain)?;
                let record = self.authorize(KeyOp::Metadata, key, call, rec, &m).await?;
                let usage = XksUsage::of(&record);
                let mut key_usage = Vec::new();
                if usage.encrypt {
                    key_usage.push("ENCRYPT");
                }
                if usage.decrypt {
                    key_usage.push("DECRYPT");
                }
                let status = if record.state == KeyState::Enabled {
                    "ENABLED"
                } else {
                    "DISABLED"
                };
                Ok(serde_json::json!({
                    "keySpec": "AES_256",
                    "keyUsage": key_usage,
                    "keyStatus": status,
                }))
            }
            Body::Encrypt(body) => self.encrypt(body, key, call, rec).await,
            Body::Decrypt(body) => self.decrypt(body, key, call, rec).await,
        }
    }

    async fn encrypt(
        &self,
        body: EncryptBody,
        key: &str,
        call: &CallContext,
        rec: &mut Recorder,
    ) -> Result<serde_json::Value, (XksError, String)> {
        let plain = |e: XksError| (e, e.message.to_owned());
        let m = required_metadata(body.request_metadata, true, true).map_err(plain)?;
        check_algorithm(body.encryption_algorithm.as_deref()).map_err(plain)?;
        let encoded = body
            .plaintext
            .map(Zeroizing::new)
            .ok_or_else(|| plain(XksError::validation("plaintext is required")))?;
        let plaintext = Zeroizing::new(
            STANDARD
                .decode(encoded.as_bytes())
                .map_err(|_| plain(XksError::validation("plaintext is not base64")))?,
        );
        if plaintext.is_empty() {
            return Err(plain(XksError::validation("plaintext is empty")));
        }
        let aad = b64(
            body.additional_authenticated_data.as_deref(),
            "additionalAuthenticatedData is not base64",
        )
        .map_err(plain)?;
        let cdiv = match body.ciphertext_data_integrity_value_algorithm.as_deref() {
            None => false,
            Some("SHA_256") => true,
            Some(_) => {
                return Err(plain(XksError::validation(
                    "ciphertextDataIntegrityValueAlgorithm must be SHA_256",
                )));
            }
        };
        rec.xks(self.facts(&m, Some(&aad)));
        let record = self.authorize(KeyOp::Encrypt, key, call, rec, &m).await?;
        usable(&record).map_err(plain)?;
        let usage = XksUsage::of(&record);
        if !usage.encrypt || (cdiv && !usage.decrypt) {
            return Err(plain(XksError::invalid_key_usage(if usage.encrypt {
                "a ciphertext integrity value needs a key that can also decrypt"
            } else {
                "the key does not allow ENCRYPT"
            })));
        }
        if plaintext.len() > wire::MAX_PLAINTEXT || aad.len() > wire::MAX_AAD {
            return Err(plain(XksError::unsupported(
                "plaintext or AAD larger than 8192 bytes",
            )));
        }
        let sealed = self
            .state
            .keys
            .xks_encrypt(&call.caller(), &record, &aad, plaintext, cdiv)
            .await
            .map_err(|e| key_error(&e))?;
        rec.version(sealed.version);
        let mut out = serde_json::json!({
            "ciphertext": STANDARD.encode(&sealed.ciphertext),
            "initializationVector": STANDARD.encode(sealed.iv),
            "authenticationTag": STANDARD.encode(sealed.tag),
            "ciphertextMetadata": STANDARD.encode(sealed.metadata),
        });
        if let (Some(v), Some(obj)) = (sealed.cdiv, out.as_object_mut()) {
            obj.insert(
                "ciphertextDataIntegrityValue".to_owned(),
                STANDARD.encode(v).into(),
            );
        }
        Ok(out)
    }

    async fn decrypt(
        &self,
        body: DecryptBody,
        key: &str,
        call: &CallContext,
        rec: &mut Recorder,
    ) -> Result<serde_json::Value, (XksError, String)> {
        let plain = |e: XksError| (e, e.message.to_owned());
        let m = required_metadata(body.request_metadata, true, true).map_err(plain)?;
        check_algorithm(body.encryption_algorithm.as_deref()).map_err(plain)?;
        let ciphertext = required_b64(
            body.ciphertext,
            ("ciphertext is required", "ciphertext is not base64"),
        )
        .map_err(plain)?;
        let iv = required_b64(
            body.initialization_vector,
            (
                "initializationVector is required",
                "initializationVector is not base64",
            ),
        )
        .map_err(plain)?;
        let tag = required_b64(
            body.authentication_tag,
            (
                "authenticationTag is required",
                "authenticationTag is not base64",
            ),
        )
        .map_err(plain)?;
        let metadata = b64(
            body.ciphertext_metadata.as_deref(),
            "ciphertextMetadata is not base64",
        )
        .map_err(plain)?;
        let aad = b64(
            body.additional_authenticated_data.as_deref(),
            "additionalAuthenticatedData is not base64",
        )
        .map_err(plain)?;
        rec.xks(self.facts(&m, Some(&aad)));
        let record = self.authorize(KeyOp::Decrypt, key, call, rec, &m).await?;
        usable(&record).map_err(plain)?;
        if !XksUsage::of(&record).decrypt {
            return Err(plain(XksError::invalid_key_usage(
                "the key does not allow DECRYPT",
            )));
        }
        if ciphertext.len() > wire::MAX_PLAINTEXT || aad.len() > wire::MAX_AAD {
            return Err(plain(XksError::unsupported(
                "ciphertext or AAD larger than 8192 bytes",
            )));
        }
        let bad = |what: &'static str| plain(XksError::invalid_ciphertext(what));
        let iv: [u8; 12] = iv
            .try_into()
            .map_err(|_| bad("initializationVector must be 12 bytes"))?;
        let tag: [u8; TAG_LEN] = tag
            .try_into()
            .map_err(|_| bad("authenticationTag must be 16 bytes"))?;
        if metadata.len() > wire::MAX_METADATA || ciphertext.is_empty() {
            return Err(bad("ciphertext or ciphertextMetadata is not valid"));
        }
        let input = XksCiphertext {
            aad: &aad,
            metadata: &metadata,
            iv,
            ciphertext: &ciphertext,
            tag,
        };
        let (version, plaintext) = self
            .state
            .keys
            .xks_decrypt(&call.caller(), &record, input)
            .await
            .map_err(|e| key_error(&e))?;
        rec.version(version);
        let encoded = Zeroizing::new(STANDARD.encode(plaintext.as_slice()));
        Ok(serde_json::json!({ "plaintext": encoded.as_str() }))
    }

    /// The XKS key `key` of this store, authorized for `op` (residency guard and Cedar).
    async fn authorize(
        &self,
        op: KeyOp,
        key: &str,
        call: &CallContext,
        rec: &mut Recorder,
        m: &RequestMetadata,
    ) -> Result<KeyRecord, (XksError, String)> {
        let not_found = || {
            (
                XksError::KEY_NOT_FOUND,
                "no XKS key of this name in this key store".to_owned(),
            )
        };
        let name = KeyName::parse(key).map_err(|_| not_found())?;
        if !is_xks_key_id(name.as_str()) || !self.store.allows_key(name.as_str()) {
            return Err(not_found());
        }
        rec.key(name.as_str());
        let keys = &self.state.keys;
        let record = if op == KeyOp::Metadata {
            keys.get_key(&name).await
        } else {
            keys.get_key_for_release(&name).await
        }
        .map_err(|e| match e {
            KeyError::NotFound => not_found(),
            other => key_error(&other),
        })?;
        if record.purpose != Purpose::Xks || record.state == KeyState::Destroyed {
            return Err(not_found());
        }
        let facts = XksRequestFacts {
            key_store: &self.store.uri_prefix,
            kms_operation: m.kms_operation.as_deref().unwrap_or_default(),
            aws_principal_arn: m.aws_principal_arn.as_deref().unwrap_or_default(),
            kms_key_arn: m.kms_key_arn.as_deref().unwrap_or_default(),
            kms_via_service: m.kms_via_service.as_deref().unwrap_or_default(),
            aws_source_vpc: m.aws_source_vpc.as_deref().unwrap_or_default(),
            aws_source_vpce: m.aws_source_vpce.as_deref().unwrap_or_default(),
        };
        self.state
            .authorize_xks(call, op.action(), &record, &facts)
            .map_err(|s| (XksError::ACCESS_DENIED, s.message().to_owned()))?;
        Ok(record)
    }
}

/// An enabled key (a disabled one answers InvalidStateException, which KMS shows as "the
/// external key is not enabled").
fn usable(record: &KeyRecord) -> Result<(), XksError> {
    match record.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(XksError::invalid_state("the external key is disabled")),
        KeyState::PendingDestruction => Err(XksError::invalid_state(
            "the external key is pending destruction",
        )),
        KeyState::Destroyed => Err(XksError::KEY_NOT_FOUND),
    }
}

/// The XKS answer to a key-service error; the detail (safe, from `KeyError`'s Display) goes
/// to the record and the log only.
fn key_error(e: &KeyError) -> (XksError, String) {
    let x = match e {
        KeyError::Input(_) | KeyError::Envelope(_) | KeyError::Invalid(_) => {
            XksError::validation("invalid request")
        }
        KeyError::DecryptFailed => {
            XksError::invalid_ciphertext("the ciphertext, IV, tag, AAD or metadata is not valid")
        }
        KeyError::NotFound => XksError::KEY_NOT_FOUND,
        KeyError::Residency(_) | KeyError::Revoked => XksError::ACCESS_DENIED,
        KeyError::Precondition(_) => XksError::invalid_state("the external key is not usable now"),
        KeyError::Hsm(h) if h.kind() != crate::hsm::HsmErrorKind::Caller => {
            XksError::DEPENDENCY_TIMEOUT
        }
        KeyError::Hsm(_)
        | KeyError::SelfCheck
        | KeyError::Store(_)
        | KeyError::AlreadyExists(_)
        | KeyError::Conflict(_) => XksError::internal("the key manager failed"),
    };
    if x.code == tonic::Code::Internal || x.code == tonic::Code::Unavailable {
        tracing::error!(error = ?e, "XKS key operation failed");
    } else {
        tracing::info!(error = %e, error_name = x.name, "XKS key operation refused");
    }
    (x, e.to_string())
}
