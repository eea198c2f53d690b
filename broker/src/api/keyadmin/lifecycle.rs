//! KeyAdmin lifecycle handlers: UpdateKey, DisableKey, EnableKey, ScheduleKeyDestruction,
//! CancelKeyDestruction, RevokeLeases. Each transition is audited (by the service wrapper) with
//! the key, the version it touched and the outcome.

use keybroker_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::KeyAdminApi;
use crate::api::audit::Recorder;
use crate::api::convert;
use crate::api::status::{invalid, key_error};
use crate::keys::KeyUpdate;
use crate::policy::Action;
use crate::store::RevocationTarget;

/// Longest job id or subject accepted by RevokeLeases.
const MAX_TARGET_LEN: usize = 256;

impl KeyAdminApi {
    #[tracing::instrument(skip_all, name = "UpdateKey")]
    pub(super) async fn update_key(
        &self,
        req: Request<pb::UpdateKeyRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::Key>, Status> {
        let name = req.get_ref().name.clone();
        let (call, key) = self
            .begin_on_key(&req, &name, Action::UpdateKey, rec)
            .await?;
        let r = req.into_inner();
        let update = KeyUpdate {
            min_decryption_version: r.min_decryption_version,
            rotation_period: convert::rotation_period(r.rotation_period, &call.rid)?,
        };
        if update.min_decryption_version.is_none() && update.rotation_period.is_none() {
            return Err(invalid(
                "nothing to update: give min_decryption_version and/or rotation_period",
                &call.rid,
            ));
        }
        let key = (self.state.keys.update_key(&key, update).await)
            .map_err(|e| key_error(&e, &call.rid))?;
        tracing::info!(request_id = %call.rid, key = %key.name, min_decryption_version =
            key.min_decryption_version, rotation_period = ?key.rotation_period_secs,
            subject = %call.principal.subject, "key updated");
        Ok(self.key_response(&call, &key))
    }

    async fn set_enabled(
        &self,
        req: &Request<impl Send>,
        (name, version): (String, u32),
        enable: bool,
        rec: &mut Recorder,
    ) -> Result<Response<pb::Key>, Status> {
        let action = if enable {
            Action::EnableKey
        } else {
            Action::DisableKey
        };
        let (call, key) = self.begin_on_key(req, &name, action, rec).await?;
        if version != 0 {
            rec.version(version);
        }
        let key = (self.state.keys.set_enabled(&key, version, enable).await)
            .map_err(|e| key_error(&e, &call.rid))?;
        tracing::info!(request_id = %call.rid, key = %key.name, version, enable,
            subject = %call.principal.subject, "key state changed");
        Ok(self.key_response(&call, &key))
    }

    #[tracing::instrument(skip_all, name = "DisableKey")]
    pub(super) async fn disable_key(
        &self,
        req: Request<pb::DisableKeyRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::Key>, Status> {
        let target = (req.get_ref().name.clone(), req.get_ref().version);
        self.set_enabled(&req, target, false, rec).await
    }

    #[tracing::instrument(skip_all, name = "EnableKey")]
    pub(super) async fn enable_key(
        &self,
        req: Request<pb::EnableKeyRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::Key>, Status> {
        let target = (req.get_ref().name.clone(), req.get_ref().version);
        self.set_enabled(&req, target, true, rec).await
    }

    #[tracing::instrument(skip_all, name = "ScheduleKeyDestruction")]
    pub(super) async fn schedule_key_destruction(
        &self,
        req: Request<pb::ScheduleKeyDestructionRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::Key>, Status> {
        let name = req.get_ref().name.clone();
        let (call, key) =
            (self.begin_on_key(&req, &name, Action::ScheduleKeyDestruction, rec)).await?;
        let wait = convert::ttl(req.into_inner().waiting_period, &call.rid)?;
        let key = (self.state.keys.schedule_destruction(&key, wait).await)
            .map_err(|e| key_error(&e, &call.rid))?;
        tracing::warn!(request_id = %call.rid, key = %key.name, destroy_after = ?key.destroy_after,
            subject = %call.principal.subject, "key destruction scheduled");
        Ok(self.key_response(&call, &key))
    }

    #[tracing::instrument(skip_all, name = "CancelKeyDestruction")]
    pub(super) async fn cancel_key_destruction(
        &self,
        req: Request<pb::CancelKeyDestructionRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::Key>, Status> {
        let name = req.get_ref().name.clone();
        let (call, key) =
            (self.begin_on_key(&req, &name, Action::CancelKeyDestruction, rec)).await?;
        let key = (self.state.keys.cancel_destruction(&key).await)
            .map_err(|e| key_error(&e, &call.rid))?;
        tracing::info!(request_id = %call.rid, key = %key.name,
            subject = %call.principal.subject, "key destruction cancelled; key is disabled");
        Ok(self.key_response(&call, &key))
    }

    #[tracing::instrument(skip_all, name = "RevokeLeases")]
    pub(super) async fn revoke_leases(
        &self,
        req: Request<pb::RevokeLeasesRequest>,
        rec: &mut Recorder,
    ) -> Result<Response<pb::RevokeLeasesResponse>, Status> {
        let call = rec.begin(&self.state, &req).await?;
        let rid = &call.rid;
        self.state.authorize_unkeyed(&call, Action::RevokeLeases)?;
        let r = req.into_inner();
        let ok = |s: &str| s.len() <= MAX_TARGET_LEN && !s.chars().any(char::is_control);
        if !ok(&r.job) || !ok(&r.subject) || !ok(&r.issuer) {
            return Err(invalid(
                format!(
                    "job, subject and issuer: at most {MAX_TARGET_LEN} bytes, no control characters"
                ),
                rid,
            ));
        }
        let target = match (r.job.is_empty(), r.subject.is_empty()) {
            (false, true) if r.issuer.is_empty() => RevocationTarget::Job(r.job),
            (true, false) => RevocationTarget::Principal {
                issuer: r.issuer,
                subject: r.subject,
            },
            _ => {
                return Err(invalid(
                    "give exactly one of job or subject (issuer only with subject)",
                    rid,
                ));
            }
        };
        // The audit record names the target in its context field (ids only, no secrets).
        let mut facts = std::collections::HashMap::new();
        match &target {
            RevocationTarget::Job(j) => {
                facts.insert("revoke.job".to_owned(), j.clone());
            }
            RevocationTarget::Principal { issuer, subject } => {
                facts.insert("revoke.subject".to_owned(), subject.clone());
                if !issuer.is_empty() {
                    facts.insert("revoke.issuer".to_owned(), issuer.clone());
                }
            }
        }
        if let Ok(ctx) = crate::keys::KeyService::context(facts) {
            rec.context(&ctx);
        }
        let (marked, until) =
            (self.state.keys.revoke_leases(&target).await).map_err(|e| key_error(&e, rid))?;
        tracing::warn!(request_id = %rid, target = ?target, leases = marked, until,
            subject = %call.principal.subject, "leases revoked");
        Ok(rid.response(pb::RevokeLeasesResponse {
            leases_revoked: marked,
            revoked_until: Some(convert::timestamp(until)),
        }))
    }
}
