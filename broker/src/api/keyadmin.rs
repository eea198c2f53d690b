//! `keybroker.v1.KeyAdmin`: catalog operations for operators. Every one goes through identity,
//! the residency guard and Cedar (one action per operation; no bypass, dev mode included) and
//! is audited by the wrapper at the bottom. The lifecycle operations are in
//! `keyadmin/lifecycle.rs`.

mod lifecycle;

use std::sync::Arc;

use keybroker_proto::v1 as pb;
use keybroker_proto::v1::key_admin_server::KeyAdmin;
use tonic::{Request, Response, Status};

use super::audit::Recorder;
use super::status::{invalid, key_error};
use super::wrap::audited_service;
use super::{ApiState, CallContext, convert};
use crate::keys::context::EncryptionContext;
use crate::policy::Action;
use crate::store::KeyRecord;

/// Largest ListKeys page.
const MAX_PAGE: u32 = 1000;
/// ListKeys page when the caller gives none.
const DEFAULT_PAGE: u32 = 100;

/// The KeyAdmin service.
#[derive(Debug)]
pub(crate) struct KeyAdminApi {
    state: Arc<ApiState>,
}

impl KeyAdminApi {
    pub(crate) fn new(state: Arc<ApiState>) -> Self {
        Self { state }
    }

    /// Authenticates, validates `name`, authorizes `action` on it and returns the record.
    async fn begin_on_key<T>(
        &self,
        req: &Request<T>,
        name: &str,
        action: Action,
        rec: &mut Recorder,
    ) -> Result<(CallContext, KeyRecord), Status> {
        let call = rec.begin(&self.state, req).await?;
        let name = rec.named_key(name, &call.rid)?;
        let key = (self.state)
            .authorize_key(&call, action, &name, &EncryptionContext::empty())
            .await?;
        rec.hsm(&self.state.keys, &key.hsm_id);
        Ok((call, key))
    }

    /// The answer of an operation that changed or read `key`.
    fn key_response(&self, call: &CallContext, key: &KeyRecord) -> Response<pb::Key> {
        call.rid.response(convert::key(key, &self.state.keys))
    }
}

// The handlers proper, each with the call's audit recorder.
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
        let name = rec.named_key(&r.name, rid)?;
        let purpose = convert::purpose_from_pb(r.purpose, r.algorithm, rid)?;
        let labels = convert::labels(r.labels, rid)?;
        let rotation = convert::rotation_period(r.rotation_period, rid)?.flatten();
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
        Ok(self.key_response(&call, &key))
    }

    #[tracing::instrument(skip_all, name = "GetKey")]
    async fn get_key(
        &self,
        req: Request<pb::GetKeyRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::Key>, Status> {
        let name = req.get_ref().name.clone();
        let (call, key) = self.begin_on_key(&req, &name, Action::GetKey, rec).await?;
        Ok(self.key_response(&call, &key))
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
        self.state.authorize_unkeyed(&call, Action::ListKeys)?;
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
        let name = req.get_ref().name.clone();
        let (call, key) = (self.begin_on_key(&req, &name, Action::RotateKey, rec)).await?;
        let key = (self.state.keys.rotate_key(&key).await).map_err(|e| key_error(&e, &call.rid))?;
        rec.version(key.latest_version());
        tracing::info!(request_id = %call.rid, key = %key.name, version = key.latest_version(),
            subject = %call.principal.subject, "key rotated");
        Ok(self.key_response(&call, &key))
    }
}

audited_service!(KeyAdmin for KeyAdminApi {
    create_key(pb::CreateKeyRequest) -> pb::Key = CreateKey;
    get_key(pb::GetKeyRequest) -> pb::Key = GetKey;
    list_keys(pb::ListKeysRequest) -> pb::ListKeysResponse = ListKeys;
    rotate_key(pb::RotateKeyRequest) -> pb::Key = RotateKey;
    update_key(pb::UpdateKeyRequest) -> pb::Key = UpdateKey;
    disable_key(pb::DisableKeyRequest) -> pb::Key = DisableKey;
    enable_key(pb::EnableKeyRequest) -> pb::Key = EnableKey;
    schedule_key_destruction(pb::ScheduleKeyDestructionRequest) -> pb::Key
        = ScheduleKeyDestruction;
    cancel_key_destruction(pb::CancelKeyDestructionRequest) -> pb::Key = CancelKeyDestruction;
    revoke_leases(pb::RevokeLeasesRequest) -> pb::RevokeLeasesResponse = RevokeLeases;
});
