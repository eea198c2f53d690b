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
        let name = convert::key_name(&r.key, rid)?;
        rec.key(name.as_str());
        let ctx = convert::context(r.context, rid)?;
        rec.context(&ctx);
        let ttl = convert::ttl(r.ttl, rid)?;
        let key = (self.state)
            .authorize_key(&call, Action::GenerateDataKey, &name, &ctx)
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
            subject = %call.principal.subject, lease = %released.lease.id, "data key issued");
        Ok(rid.response(pb::GenerateDataKeyResponse {
            plaintext: released.plaintext.to_vec(),
            ciphertext: sealed.ciphertext,
            key_version: sealed.version,
            lease: Some(convert::lease(&released.lease)),
            ..Default::default()
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
        let name = convert::key_name(&r.key, rid)?;
        rec.key(name.as_str());
        let ctx = convert::context(r.context, rid)?;
        rec.context(&ctx);
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
        let ctx = convert::context(r.context, rid)?;
        rec.context(&ctx);
        let ttl = convert::ttl(r.ttl, rid)?;
        let (env, key) = (self.state)
            .authorize_ciphertext(&call, Action::Decrypt, ct, &ctx)
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
            subject = %call.principal.subject, lease = %released.lease.id, "ciphertext opened");
        Ok(rid.response(pb::DecryptResponse {
            plaintext: released.plaintext.to_vec(),
            key: released.key.clone(),
            key_version: released.version,
            lease: Some(convert::lease(&released.lease)),
            ..Default::default()
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
        let name = convert::key_name(&r.key, rid)?;
        rec.key(name.as_str());
        let ctx = convert::context(r.context, rid)?;
        rec.context(&ctx);
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
        let ctx = convert::context(r.context, rid)?;
        rec.context(&ctx);
        let (env, record) = (self.state)
            .authorize_ciphertext(&call, Action::ReEncrypt, ct, &ctx)
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

impl DataKeysApi {
    /// `GetAttestationNonce`: authenticated like every call, then a nonce bound to the caller.
    async fn attestation_nonce(
        &self,
        req: Request<pb::GetAttestationNonceRequest>,
    ) -> Result<Response<pb::GetAttestationNonceResponse>, Status> {
        let call = self.state.begin(&req).await?;
        Err(call.rid.status(
            tonic::Code::Unimplemented,
            "attestation is not configured".to_owned(),
        ))
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
