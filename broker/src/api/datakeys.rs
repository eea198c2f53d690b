//! `keybroker.v1.DataKeys`: the workload-facing service.

use std::sync::Arc;

use keybroker_proto::v1 as pb;
use keybroker_proto::v1::data_keys_server::DataKeys;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::audit::Recorder;
use super::status::{invalid, key_error};
use super::wrap::audited_service;
use super::{ApiState, convert};
use crate::policy::Action;
use keybroker_formats::release;

/// The DataKeys service.
#[derive(Debug)]
pub(crate) struct DataKeysApi {
    state: Arc<ApiState>,
}

impl DataKeysApi {
    pub(crate) fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }
}

// The handlers proper, each with the call's audit recorder; the trait impl below wraps
// every one so a record is appended, granted or refused, before the response leaves.
impl DataKeysApi {
    #[tracing::instrument(skip_all, name = "GenerateDataKey")]
    pub(crate) async fn generate_data_key(
        &self,
        req: Request<pb::GenerateDataKeyRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let r = req.into_inner();
        let name = rec.named_key(&r.key, rid)?;
        let ctx = rec.encryption_context(r.context, rid)?;
        let ttl = convert::ttl(r.ttl, rid)?;
        let recipient = convert::recipient(r.recipient, rid)?;
        let key = (self.state)
            .authorize_key_to(
                &call,
                Action::GenerateDataKey,
                &name,
                &ctx,
                recipient.as_ref(),
            )
            .await?;
        rec.hsm(&self.state.keys, &key.hsm_id);
        let (released, sealed) = self
            .state
            .keys
            .generate_data_key(&call.caller(), (&name, &key), &ctx, ttl)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.version(sealed.version);
        rec.lease(&released.lease.id);
        tracing::info!(request_id = %rid, key = name.as_str(), version = sealed.version,
            subject = %call.principal.subject, lease = %released.lease.id,
            sealed_to_recipient = recipient.is_some(), "data key issued");
        let (plaintext, for_recipient) = release_to(
            recipient.as_ref(),
            release::ReleaseOp::GenerateDataKey,
            name.as_str(),
            sealed.version,
            &released.lease.id,
            &released.plaintext,
            rid,
        )?;
        Ok(rid.response(pb::GenerateDataKeyResponse {
            plaintext,
            ciphertext: sealed.ciphertext,
            key_version: sealed.version,
            lease: Some(convert::lease(&released.lease)),
            recipient_suite: recipient_suite(&for_recipient),
            ciphertext_for_recipient: for_recipient,
        }))
    }

    #[tracing::instrument(skip_all, name = "GenerateDataKeyWithoutPlaintext")]
    pub(crate) async fn generate_data_key_without_plaintext(
        &self,
        req: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let r = req.into_inner();
        let name = rec.named_key(&r.key, rid)?;
        let ctx = rec.encryption_context(r.context, rid)?;
        let key = (self.state)
            .authorize_key(&call, Action::GenerateDataKeyWithoutPlaintext, &name, &ctx)
            .await?;
        rec.hsm(&self.state.keys, &key.hsm_id);
        let sealed = self
            .state
            .keys
            .generate_data_key_without_plaintext(&call.caller(), (&name, &key), &ctx)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.version(sealed.version);
        Ok(rid.response(pb::GenerateDataKeyWithoutPlaintextResponse {
            ciphertext: sealed.ciphertext,
            key_version: sealed.version,
        }))
    }

    #[tracing::instrument(skip_all, name = "Decrypt")]
    pub(crate) async fn decrypt(
        &self,
        req: Request<pb::DecryptRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let r = req.into_inner();
        let ct = convert::ciphertext(&r.ciphertext, rid)?;
        let ctx = rec.encryption_context(r.context, rid)?;
        let ttl = convert::ttl(r.ttl, rid)?;
        let recipient = convert::recipient(r.recipient, rid)?;
        let (env, key) = (self.state)
            .authorize_ciphertext(&call, Action::Decrypt, ct, &ctx, recipient.as_ref())
            .await?;
        rec.key(&key.name);
        rec.version(env.version);
        rec.hsm(&self.state.keys, &key.hsm_id);
        let released = self
            .state
            .keys
            .decrypt(&call.caller(), &key, &env, &ctx, ttl)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.key(&released.key);
        rec.version(released.version);
        rec.lease(&released.lease.id);
        tracing::info!(request_id = %rid, key = %released.key, version = released.version,
            subject = %call.principal.subject, lease = %released.lease.id,
            sealed_to_recipient = recipient.is_some(), "ciphertext opened");
        let (plaintext, for_recipient) = release_to(
            recipient.as_ref(),
            release::ReleaseOp::Decrypt,
            &released.key,
            released.version,
            &released.lease.id,
            &released.plaintext,
            rid,
        )?;
        Ok(rid.response(pb::DecryptResponse {
            plaintext,
            key: released.key.clone(),
            key_version: released.version,
            lease: Some(convert::lease(&released.lease)),
            recipient_suite: recipient_suite(&for_recipient),
            ciphertext_for_recipient: for_recipient,
        }))
    }

    #[tracing::instrument(skip_all, name = "Encrypt")]
    pub(crate) async fn encrypt(
        &self,
        req: Request<pb::EncryptRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let r = req.into_inner();
        let plaintext = Zeroizing::new(r.plaintext);
        if plaintext.is_empty() {
            return Err(invalid("plaintext is empty", rid));
        }
        let name = rec.named_key(&r.key, rid)?;
        let ctx = rec.encryption_context(r.context, rid)?;
        let key = (self.state)
            .authorize_key(&call, Action::Encrypt, &name, &ctx)
            .await?;
        rec.hsm(&self.state.keys, &key.hsm_id);
        let sealed = self
            .state
            .keys
            .encrypt(&call.caller(), (&name, &key), &ctx, plaintext)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.version(sealed.version);
        Ok(rid.response(pb::EncryptResponse {
            ciphertext: sealed.ciphertext,
            key_version: sealed.version,
        }))
    }

    #[tracing::instrument(skip_all, name = "ReEncrypt")]
    pub(crate) async fn re_encrypt(
        &self,
        req: Request<pb::ReEncryptRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let r = req.into_inner();
        let ct = convert::ciphertext(&r.ciphertext, rid)?;
        let ctx = rec.encryption_context(r.context, rid)?;
        let (env, record) = (self.state)
            .authorize_ciphertext(&call, Action::ReEncrypt, ct, &ctx, None)
            .await?;
        rec.key(&record.name);
        rec.hsm(&self.state.keys, &record.hsm_id);
        let (key, from, sealed) = self
            .state
            .keys
            .re_encrypt(&call.caller(), &record, &env, &ctx)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.key(&key);
        rec.version(sealed.version);
        Ok(rid.response(pb::ReEncryptResponse {
            ciphertext: sealed.ciphertext,
            key,
            source_key_version: from,
            key_version: sealed.version,
        }))
    }
}

/// The released key as the response carries it: in clear, or sealed to `recipient` (HPKE,
/// bound to the call by `keybroker_formats::release::info`) with the clear field empty.
fn release_to(
    recipient: Option<&[u8; 32]>,
    op: release::ReleaseOp,
    key: &str,
    version: u32,
    lease_id: &str,
    plaintext: &[u8],
    rid: &super::RequestId,
) -> Result<(Vec<u8>, Vec<u8>), Status> {
    let Some(recipient) = recipient else {
        return Ok((plaintext.to_vec(), Vec::new()));
    };
    let suite = release::SUITE_X25519_SHA256_AES256GCM;
    let info = release::info(op, key, version, lease_id, suite);
    let sealed = release::seal(recipient, &info, plaintext).map_err(|e| {
        tracing::error!(request_id = %rid, error = %e, "sealing to the recipient failed");
        rid.status(tonic::Code::InvalidArgument, format!("recipient: {e}"))
    })?;
    Ok((Vec::new(), sealed))
}

fn recipient_suite(sealed: &[u8]) -> i32 {
    if sealed.is_empty() {
        pb::HpkeSuite::Unspecified as i32
    } else {
        pb::HpkeSuite::X25519Sha256Aes256gcm as i32
    }
}

impl DataKeysApi {
    /// `GetAttestationNonce`: authenticated like every call, then a nonce bound to the caller.
    /// Not a key operation: logged, not audited.
    async fn attestation_nonce(
        &self,
        req: Request<pb::GetAttestationNonceRequest>,
    ) -> Result<Response<pb::GetAttestationNonceResponse>, Status> {
        let call = self.state.begin(&req).await?;
        let rid = &call.rid;
        let Some(attestation) = &self.state.attestation else {
            return Err(rid.status(
                tonic::Code::FailedPrecondition,
                "attestation is not configured on this broker ([attestation] in the config)"
                    .to_owned(),
            ));
        };
        let (nonce, expires_at) = attestation
            .nonce(&call.principal, super::unix_now())
            .map_err(|e| {
                tracing::warn!(request_id = %rid, error = ?e, "attestation nonce refused");
                match e {
                    crate::attestation::nonce::IssueError::Full => rid.status(
                        tonic::Code::ResourceExhausted,
                        "too many attestation nonces in use; retry later".to_owned(),
                    ),
                    crate::attestation::nonce::IssueError::Random => rid.status(
                        tonic::Code::Unavailable,
                        "no randomness for a nonce; retry later".to_owned(),
                    ),
                }
            })?;
        tracing::info!(request_id = %rid, subject = %call.principal.subject,
            "attestation nonce issued");
        Ok(rid.response(pb::GetAttestationNonceResponse {
            nonce,
            expires_at: Some(convert::timestamp(
                i64::try_from(expires_at).unwrap_or(i64::MAX),
            )),
        }))
    }
}

audited_service!(DataKeys for DataKeysApi {
    generate_data_key(pb::GenerateDataKeyRequest) -> pb::GenerateDataKeyResponse
        = GenerateDataKey;
    generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest)
        -> pb::GenerateDataKeyWithoutPlaintextResponse = GenerateDataKeyWithoutPlaintext;
    decrypt(pb::DecryptRequest) -> pb::DecryptResponse = Decrypt;
    encrypt(pb::EncryptRequest) -> pb::EncryptResponse = Encrypt;
    re_encrypt(pb::ReEncryptRequest) -> pb::ReEncryptResponse = ReEncrypt;
} not audited {
    async fn get_attestation_nonce(
        &self,
        req: Request<pb::GetAttestationNonceRequest>,
    ) -> Result<Response<pb::GetAttestationNonceResponse>, Status> {
        self.attestation_nonce(req).await
    }
});
