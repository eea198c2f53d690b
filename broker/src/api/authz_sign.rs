//! Authorization of a signature: the residency guard, then Cedar's `Sign` / `SignAttestation`
//! with what is being signed in the context. Same rules as `authz.rs`: an unknown key is
//! refused like a forbidden one, and the decision is kept for the audit record.

use tonic::{Code, Status};

use crate::keys::name::KeyName;
use crate::policy::{KeyFacts, SignAction, SigningFacts};
use crate::store::KeyRecord;

use super::status::key_error;
use super::{ApiState, CallContext};

const DENIED: &str = "permission denied";

impl ApiState {
    /// Authorizes signing `what` with key `name` as `action`; returns the record policy saw.
    pub(crate) async fn authorize_signing(
        &self,
        call: &CallContext,
        action: SignAction,
        name: &KeyName,
        what: &SigningFacts,
    ) -> Result<KeyRecord, Status> {
        let rid = &call.rid;
        let record = self
            .keys
            .get_key_for_release(name)
            .await
            .map_err(|e| key_error(&e, rid))?;
        let known = self
            .keys
            .hsm_info(&record.hsm_id)
            .map(|h| h.jurisdiction.clone());
        let _first = call.facts.hsm.set((record.hsm_id.clone(), known.clone()));
        let jurisdiction = known.unwrap_or_default();
        let facts = KeyFacts {
            name: &record.name,
            purpose: super::authz::purpose_name(record.purpose),
            labels: &record.labels,
            hsm_jurisdiction: &jurisdiction,
        };
        if let Some(rule) = self.residency_violation(call, &facts) {
            tracing::info!(request_id = %rid, action = action.as_str(), rule, "residency guard denied");
            self.metrics.decision("residency_deny");
            return Err(rid.status(Code::PermissionDenied, format!("residency: {rule}")));
        }
        let decision = call
            .policy
            .decide_signing(&call.principal, action, &facts, what)
            .map_err(|e| {
                tracing::error!(request_id = %rid, error = %e, "policy input error");
                rid.status(Code::PermissionDenied, DENIED.to_owned())
            })?;
        let allowed = decision.allowed;
        self.metrics
            .decision(if allowed { "allow" } else { "deny" });
        tracing::info!(request_id = %rid, action = action.as_str(), allowed,
            reasons = ?decision.reasons, policy_sha256 = %decision.policy_sha256, "policy decision");
        let _first = call.facts.decision.set(decision);
        if allowed {
            Ok(record)
        } else {
            Err(rid.status(Code::PermissionDenied, DENIED.to_owned()))
        }
    }
}
