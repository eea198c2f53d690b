//! `keybroker.v1.DataKeys`: the workload-facing service.

use std::sync::Arc;

use keybroker_proto::v1 as pb;
use keybroker_proto::v1::data_keys_server::DataKeys;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::status::{invalid, key_error};
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

#[tonic::async_trait]
impl DataKeys for DataKeysApi {
    #[tracing::instrument(skip_all, name = "GenerateDataKey")]
    async fn generate_data_key(
        &self,
        req: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let call = self.state.begin(&req)?;
        let rid = &call.rid;
        let r = req.into_inner();
        let name = convert::key_name(&r.key, rid)?;
        let ctx = convert::context(r.context, rid)?;
        let ttl = convert::ttl(r.ttl, rid)?;
        (self.state)
            .authorize_key(&call, Action::GenerateDataKey, &name, &ctx)
            .await?;
        let (released, sealed) = self
            .state
            .keys
            .generate_data_key(&call.caller(), &name, &ctx, ttl)
            .await
            .map_err(|e| key_error(&e, rid))?;
        tracing::info!(request_id = %rid, key = name.as_str(), version = sealed.version,
            subject = %call.principal.subject, lease = %released.lease.id, "data key issued");
        Ok(rid.response(pb::GenerateDataKeyResponse {
            plaintext: released.plaintext.to_vec(),
            ciphertext: sealed.ciphertext,
            key_version: sealed.version,
            lease: Some(convert::lease(&released.lease)),
        }))
    }

    #[tracing::instrument(skip_all, name = "GenerateDataKeyWithoutPlaintext")]
    async fn generate_data_key_without_plaintext(
        &self,
        req: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        let call = self.state.begin(&req)?;
        let rid = &call.rid;
        let r = req.into_inner();
        let name = convert::key_name(&r.key, rid)?;
        let ctx = convert::context(r.context, rid)?;
        (self.state)
            .authorize_key(&call, Action::GenerateDataKeyWithoutPlaintext, &name, &ctx)
            .await?;
        let sealed = self
            .state
            .keys
            .generate_data_key_without_plaintext(&name, &ctx)
            .await
            .map_err(|e| key_error(&e, rid))?;
        Ok(rid.response(pb::GenerateDataKeyWithoutPlaintextResponse {
            ciphertext: sealed.ciphertext,
            key_version: sealed.version,
        }))
    }

    #[tracing::instrument(skip_all, name = "Decrypt")]
    async fn decrypt(
        &self,
        req: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let call = self.state.begin(&req)?;
        let rid = &call.rid;
        let r = req.into_inner();
        let ct = convert::ciphertext(&r.ciphertext, rid)?;
        let ctx = convert::context(r.context, rid)?;
        let ttl = convert::ttl(r.ttl, rid)?;
        (self.state)
            .authorize_ciphertext(&call, Action::Decrypt, ct, &ctx)
            .await?;
        let released = self
            .state
            .keys
            .decrypt(&call.caller(), ct, &ctx, ttl)
            .await
            .map_err(|e| key_error(&e, rid))?;
        tracing::info!(request_id = %rid, key = %released.key, version = released.version,
            subject = %call.principal.subject, lease = %released.lease.id, "ciphertext opened");
        Ok(rid.response(pb::DecryptResponse {
            plaintext: released.plaintext.to_vec(),
            key: released.key.clone(),
            key_version: released.version,
            lease: Some(convert::lease(&released.lease)),
        }))
    }

    #[tracing::instrument(skip_all, name = "Encrypt")]
    async fn encrypt(
        &self,
        req: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let call = self.state.begin(&req)?;
        let rid = &call.rid;
        let r = req.into_inner();
        let plaintext = Zeroizing::new(r.plaintext);
        if plaintext.is_empty() {
            return Err(invalid("plaintext is empty", rid));
        }
        let name = convert::key_name(&r.key, rid)?;
        let ctx = convert::context(r.context, rid)?;
        (self.state)
            .authorize_key(&call, Action::Encrypt, &name, &ctx)
            .await?;
        let sealed = self
            .state
            .keys
            .encrypt(&name, &ctx, plaintext)
            .await
            .map_err(|e| key_error(&e, rid))?;
        Ok(rid.response(pb::EncryptResponse {
            ciphertext: sealed.ciphertext,
            key_version: sealed.version,
        }))
    }

    #[tracing::instrument(skip_all, name = "ReEncrypt")]
    async fn re_encrypt(
        &self,
        req: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        let call = self.state.begin(&req)?;
        let rid = &call.rid;
        let r = req.into_inner();
        let ct = convert::ciphertext(&r.ciphertext, rid)?;
        let ctx = convert::context(r.context, rid)?;
        (self.state)
            .authorize_ciphertext(&call, Action::ReEncrypt, ct, &ctx)
            .await?;
        let (key, from, sealed) = self
            .state
            .keys
            .re_encrypt(ct, &ctx)
            .await
            .map_err(|e| key_error(&e, rid))?;
        Ok(rid.response(pb::ReEncryptResponse {
            ciphertext: sealed.ciphertext,
            key,
            source_key_version: from,
            key_version: sealed.version,
        }))
    }
}
