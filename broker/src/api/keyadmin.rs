//! `keybroker.v1.KeyAdmin`: catalog operations for operators.

use std::sync::Arc;

use keybroker_proto::v1 as pb;
use keybroker_proto::v1::key_admin_server::KeyAdmin;
use tonic::{Request, Response, Status};

use super::audit::Recorder;
use super::status::{invalid, key_error};
use super::{ApiState, convert};
use crate::audit::Op;
use crate::policy::Action;

/// Largest ListKeys page.
const MAX_PAGE: u32 = 1000;
/// ListKeys page when the caller gives none.
const DEFAULT_PAGE: u32 = 100;
/// Shortest automatic rotation period.
const MIN_ROTATION_SECS: i64 = 3600;

/// The KeyAdmin service.
#[derive(Debug)]
pub(crate) struct KeyAdminApi {
    state: Arc<ApiState>,
}

impl KeyAdminApi {
    pub(crate) fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }
}

// The handlers proper, each with the call's audit recorder; the trait impl below wraps
// every one so a record is appended, granted or refused, before the response leaves.
impl KeyAdminApi {
    #[tracing::instrument(skip_all, name = "CreateKey")]
    async fn create_key(
        &self,
        req: Request<pb::CreateKeyRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::Key>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let r = req.into_inner();
        let name = convert::key_name(&r.name, rid)?;
        rec.key(name.as_str());
        let purpose = convert::purpose_from_pb(r.purpose, rid)?;
        let labels = convert::labels(r.labels, rid)?;
        let rotation = match r.rotation_period {
            None => None,
            Some(d) if d.seconds >= MIN_ROTATION_SECS && d.nanos == 0 => {
                Some(std::time::Duration::from_secs(d.seconds.unsigned_abs()))
            }
            Some(_) => {
                return Err(invalid(
                    format!("rotation_period must be whole seconds, at least {MIN_ROTATION_SECS}"),
                    rid,
                ));
            }
        };
        let hsm = (!r.hsm_id.is_empty()).then_some(r.hsm_id.as_str());
        (self.state).authorize_new_key(&call, &name, purpose, &labels, hsm)?;
        let key = self
            .state
            .keys
            .create_key(&name, purpose, labels, hsm, rotation)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.hsm(&self.state.keys, &key.hsm_id);
        rec.version(key.latest_version());
        tracing::info!(request_id = %rid, key = name.as_str(), hsm = %key.hsm_id,
            subject = %call.principal.subject, "key created");
        Ok(rid.response(convert::key(&key, &self.state.keys)))
    }

    #[tracing::instrument(skip_all, name = "GetKey")]
    async fn get_key(
        &self,
        req: Request<pb::GetKeyRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::Key>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let name = convert::key_name(&req.get_ref().name, rid)?;
        rec.key(name.as_str());
        (self.state)
            .authorize_key(
                &call,
                Action::GetKey,
                &name,
                &crate::keys::context::EncryptionContext::empty(),
            )
            .await?;
        let key = self
            .state
            .keys
            .get_key(&name)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.hsm(&self.state.keys, &key.hsm_id);
        Ok(rid.response(convert::key(&key, &self.state.keys)))
    }

    #[tracing::instrument(skip_all, name = "ListKeys")]
    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let r = req.into_inner();
        self.state.authorize_listing(&call)?;
        if r.prefix.len() > 128
            || !r
                .prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-".contains(&b))
        {
            return Err(invalid(
                "prefix must be at most 128 characters of [a-z0-9._/-]",
                rid,
            ));
        }
        let limit = match r.page_size {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            _ => {
                return Err(invalid(
                    format!("page_size must be at most {MAX_PAGE}"),
                    rid,
                ));
            }
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(convert::key_name(&r.page_token, rid)?)
        };
        let keys = self
            .state
            .keys
            .list_keys(&r.prefix, after.as_ref().map(|n| n.as_str()), limit)
            .await
            .map_err(|e| key_error(&e, rid))?;
        let next_page_token = if keys.len() == limit as usize {
            keys.last().map(|k| k.name.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(rid.response(pb::ListKeysResponse {
            keys: keys
                .iter()
                .map(|k| convert::key(k, &self.state.keys))
                .collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, name = "RotateKey")]
    async fn rotate_key(
        &self,
        req: Request<pb::RotateKeyRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::Key>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        let name = convert::key_name(&req.get_ref().name, rid)?;
        rec.key(name.as_str());
        (self.state)
            .authorize_key(
                &call,
                Action::RotateKey,
                &name,
                &crate::keys::context::EncryptionContext::empty(),
            )
            .await?;
        let key = self
            .state
            .keys
            .rotate_key(&name)
            .await
            .map_err(|e| key_error(&e, rid))?;
        rec.hsm(&self.state.keys, &key.hsm_id);
        rec.version(key.latest_version());
        tracing::info!(request_id = %rid, key = name.as_str(), version = key.latest_version(),
            subject = %call.principal.subject, "key rotated");
        Ok(rid.response(convert::key(&key, &self.state.keys)))
    }
}

#[tonic::async_trait]
impl KeyAdmin for KeyAdminApi {
    async fn create_key(
        &self,
        req: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let mut rec = self.state.recorder(Op::CreateKey);
        let result = Self::create_key(self, req, &mut rec).await;
        rec.finish(result).await
    }

    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> Result<Response<pb::Key>, Status> {
        let mut rec = self.state.recorder(Op::GetKey);
        let result = Self::get_key(self, req, &mut rec).await;
        rec.finish(result).await
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let mut rec = self.state.recorder(Op::ListKeys);
        let result = Self::list_keys(self, req, &mut rec).await;
        rec.finish(result).await
    }

    async fn rotate_key(
        &self,
        req: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let mut rec = self.state.recorder(Op::RotateKey);
        let result = Self::rotate_key(self, req, &mut rec).await;
        rec.finish(result).await
    }
}
