//! Authorization of an authenticated call, before the key service runs: first the residency
//! guard (built in, not a policy option), then the Cedar policy.
//!
//! An unknown key is refused exactly like a forbidden one (PERMISSION_DENIED, same message), so
//! key names do not leak. The decision is kept on the [`CallContext`] for the audit record.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tonic::{Code, Status};

use crate::keys::KeyError;
use crate::keys::context::EncryptionContext;
use crate::keys::envelope::Envelope;
use crate::keys::name::KeyName;
use crate::policy::{Action, AuditAction, KeyFacts, XksRequestFacts};
use crate::store::{KeyRecord, Purpose};

use super::status::key_error;
use super::{ApiState, CallContext};

const DENIED: &str = "permission denied";

pub(super) fn purpose_name(p: Purpose) -> &'static str {
    match p {
        Purpose::DataKey => "datakey",
        Purpose::Seal => "seal",
        Purpose::Xks => "xks",
        Purpose::Sign(_) => "sign",
    }
}

/// Actions that end at the release gate, which re-checks what a cached key record could miss.
fn releases(action: Action) -> bool {
    matches!(
        action,
        Action::GenerateDataKey
            | Action::GenerateDataKeyWithoutPlaintext
            | Action::Decrypt
            | Action::Encrypt
            | Action::ReEncrypt
    )
}

fn context_map(ctx: &EncryptionContext) -> BTreeMap<String, String> {
    ctx.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl ApiState {
    /// Authorizes `action` on the existing key `name`; returns the record policy saw, for the
    /// key service to use (one catalog read per request before the release gate).
    pub(crate) async fn authorize_key(
        &self,
        call: &CallContext,
        action: Action,
        name: &KeyName,
        ctx: &EncryptionContext,
    ) -> Result<KeyRecord, Status> {
        self.authorize_key_to(call, action, name, ctx, None).await
    }

    /// [`ApiState::authorize_key`] for a release that may go sealed to `recipient` (an X25519
    /// key the call's attestation result must bind). A DataKeys call carrying an attestation
    /// result has it checked here, after the key is known and before policy, which then sees
    /// its facts.
    pub(crate) async fn authorize_key_to(
        &self,
        call: &CallContext,
        action: Action,
        name: &KeyName,
        ctx: &EncryptionContext,
        recipient: Option<&[u8; 32]>,
    ) -> Result<KeyRecord, Status> {
        let record = if releases(action) {
            self.keys.get_key_for_release(name).await
        } else {
            self.keys.get_key(name).await
        }
        .map_err(|e| key_error(&e, &call.rid))?;
        // Only calls that carry a result or a recipient take the attestation step: the plain
        // release path stays as it was.
        let attested = if releases(action) && (call.attestation.is_some() || recipient.is_some()) {
            self.note_hsm(call, &record);
            self.attest(call, recipient).await?
        } else {
            None
        };
        let ctx = context_map(ctx);
        match &attested {
            None => self.authorize_record(call, action, &record, &ctx)?,
            Some(facts) => self.with_record_facts(call, &record, |key| {
                let a = crate::policy::AttestationFacts {
                    tee: facts.tee,
                    measurement: &facts.measurement,
                    debug: facts.debug,
                    tcb_status: &facts.tcb_status,
                    verifier: &facts.verifier,
                    age_seconds: facts.age_seconds,
                    nonce_binding: facts.nonce_binding,
                };
                self.decide_with(call, action.as_str(), key, |p| {
                    p.decide_attested(&call.principal, action, key, &ctx, &a, recipient.is_some())
                })
            })?,
        }
        Ok(record)
    }

    /// Checks the call's attestation result, if any, and that it binds `recipient`; notes what
    /// it found (or why it was refused) for the audit record. `None`: the call carried none.
    async fn attest(
        &self,
        call: &CallContext,
        recipient: Option<&[u8; 32]>,
    ) -> Result<Option<crate::attestation::Facts>, Status> {
        use crate::attestation::profiles::BoundKey;
        use crate::audit::AttestationAudit;

        let refuse = |audit: AttestationAudit, reason: &str| {
            tracing::info!(request_id = %call.rid, reason, verifier = ?audit.verifier,
                "attestation refused");
            self.metrics.decision("attestation_deny");
            let _first = call.facts.attestation.set((audit, Some(reason.to_owned())));
            call.rid
                .status(Code::PermissionDenied, "attestation refused".to_owned())
        };
        let token = match (&call.attestation, recipient) {
            (None, None) => return Ok(None),
            (None, Some(_)) => {
                return Err(refuse(
                    AttestationAudit::default(),
                    "recipient requires attestation",
                ));
            }
            (Some(Err(why)), _) => return Err(refuse(AttestationAudit::default(), why)),
            (Some(Ok(token)), _) => token,
        };
        let Some(verifiers) = &self.attestation else {
            return Err(refuse(
                AttestationAudit::default(),
                "attestation is not configured",
            ));
        };
        let facts = match verifiers
            .check(token, &call.principal, super::unix_now())
            .await
        {
            Ok(facts) => facts,
            Err(r) => {
                let audit = AttestationAudit {
                    verifier: r.verifier,
                    ..AttestationAudit::default()
                };
                return Err(refuse(audit, &r.reason));
            }
        };
        let mut audit = AttestationAudit {
            verifier: Some(facts.verifier.clone()),
            profile: Some(facts.profile.to_owned()),
            tee: Some(facts.tee.to_owned()),
            measurement: Some(facts.measurement.clone()),
            debug: Some(facts.debug),
            tcb_status: Some(crate::audit::record::bound_identity(&facts.tcb_status)),
            age_seconds: Some(facts.age_seconds),
            nonce_binding: Some(facts.nonce_binding.to_owned()),
            recipient_sha256: None,
        };
        if let Some(want) = recipient {
            audit.recipient_sha256 = Some(hex::encode(Sha256::digest(want)));
            match &facts.recipient {
                Some(BoundKey::X25519(bound)) if bool::from(bound.ct_eq(want)) => {}
                Some(BoundKey::Unsupported(_)) => {
                    return Err(refuse(audit, "recipient key type unsupported"));
                }
                _ => return Err(refuse(audit, "recipient not bound")),
            }
        }
        let _first = call.facts.attestation.set((audit, None));
        Ok(Some(facts))
    }

    /// Authorizes `action` on the key a ciphertext names; returns the parsed envelope and the
    /// key record.
    pub(crate) async fn authorize_ciphertext(
        &self,
        call: &CallContext,
        action: Action,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
        recipient: Option<&[u8; 32]>,
    ) -> Result<(Envelope, KeyRecord), Status> {
        let env = Envelope::parse(ciphertext)
            .map_err(|e| key_error(&KeyError::Envelope(e), &call.rid))?;
        let record = self
            .authorize_key_to(call, action, &env.key, ctx, recipient)
            .await?;
        Ok((env, record))
    }

    /// Authorizes creating `name` on `hsm` (or the HSM the service would pick).
    pub(crate) fn authorize_new_key(
        &self,
        call: &CallContext,
        name: &KeyName,
        purpose: Purpose,
        labels: &BTreeMap<String, String>,
        hsm: Option<&str>,
    ) -> Result<(), Status> {
        let jurisdiction = match hsm {
            Some(id) => self.keys.hsm_info(id).map(|h| h.jurisdiction.clone()),
            None => self
                .keys
                .hsms()
                .find(|h| {
                    self.residency
                        .allowed_jurisdictions
                        .contains(&h.jurisdiction)
                })
                .map(|h| h.jurisdiction.clone()),
        }
        .unwrap_or_default();
        let facts = KeyFacts {
            name: name.as_str(),
            purpose: purpose_name(purpose),
            labels,
            hsm_jurisdiction: &jurisdiction,
        };
        self.decide(call, Action::CreateKey, &facts, &BTreeMap::new())
    }

    /// Authorizes an operation that names no key (ListKeys, RevokeLeases): resource `*`, no
    /// labels.
    pub(crate) fn authorize_unkeyed(
        &self,
        call: &CallContext,
        action: Action,
    ) -> Result<(), Status> {
        let none = BTreeMap::new();
        let jurisdiction = self
            .residency
            .allowed_jurisdictions
            .first()
            .cloned()
            .unwrap_or_default();
        let facts = KeyFacts {
            name: "*",
            purpose: "",
            labels: &none,
            hsm_jurisdiction: &jurisdiction,
        };
        self.decide(call, action, &facts, &none)
    }

    fn authorize_record(
        &self,
        call: &CallContext,
        action: Action,
        record: &KeyRecord,
        ctx: &BTreeMap<String, String>,
    ) -> Result<(), Status> {
        self.with_record_facts(call, record, |key| self.decide(call, action, key, ctx))
    }

    /// Notes `record`'s HSM for the audit record: known before any HSM call.
    fn note_hsm(&self, call: &CallContext, record: &KeyRecord) -> Option<String> {
        let known = self
            .keys
            .hsm_info(&record.hsm_id)
            .map(|h| h.jurisdiction.clone());
        let _first = call.facts.hsm.set((record.hsm_id.clone(), known.clone()));
        known
    }

    /// Runs `f` with the policy facts of `record`, after noting its HSM for the audit record.
    fn with_record_facts<T>(
        &self,
        call: &CallContext,
        record: &KeyRecord,
        f: impl FnOnce(&KeyFacts<'_>) -> T,
    ) -> T {
        let jurisdiction = self.note_hsm(call, record).unwrap_or_default();
        f(&KeyFacts {
            name: &record.name,
            purpose: purpose_name(record.purpose),
            labels: &record.labels,
            hsm_jurisdiction: &jurisdiction,
        })
    }

    /// Authorizes an XKS proxy API call on `record` (an XKS key of the caller's store): the
    /// residency guard, then the policy with what AWS KMS said about the call.
    pub(crate) fn authorize_xks(
        &self,
        call: &CallContext,
        action: Action,
        record: &KeyRecord,
        xks: &XksRequestFacts<'_>,
    ) -> Result<(), Status> {
        self.with_record_facts(call, record, |key| {
            self.decide_with(call, action.as_str(), key, |p| {
                p.decide_xks(&call.principal, action, key, xks)
            })
        })
    }

    fn decide(
        &self,
        call: &CallContext,
        action: Action,
        key: &KeyFacts<'_>,
        ctx: &BTreeMap<String, String>,
    ) -> Result<(), Status> {
        self.decide_with(call, action.as_str(), key, |p| {
            p.decide(&call.principal, action, key, ctx)
        })
    }

    /// The residency guard on `key`, then `evaluate` on the call's policy; the decision is kept
    /// for the audit record.
    fn decide_with(
        &self,
        call: &CallContext,
        action: &str,
        key: &KeyFacts<'_>,
        evaluate: impl FnOnce(
            &crate::policy::PolicyEngine,
        ) -> Result<crate::policy::Decision, crate::policy::PolicyError>,
    ) -> Result<(), Status> {
        let rid = &call.rid;
        if let Some(rule) = self.residency_violation(call, key) {
            tracing::info!(request_id = %rid, action, rule, "residency guard denied");
            self.metrics.decision("residency_deny");
            return Err(rid.status(Code::PermissionDenied, format!("residency: {rule}")));
        }
        let decision = evaluate(&call.policy).map_err(|e| {
            tracing::error!(request_id = %rid, error = %e, "policy input error");
            rid.status(Code::PermissionDenied, DENIED.to_owned())
        })?;
        let allowed = decision.allowed;
        self.metrics
            .decision(if allowed { "allow" } else { "deny" });
        tracing::info!(request_id = %rid, action, allowed,
            reasons = ?decision.reasons, policy_sha256 = %decision.policy_sha256, "policy decision");
        // Set once per call; a second authorization of the same call keeps the first.
        let _first = call.facts.decision.set(decision);
        if allowed {
            Ok(())
        } else {
            Err(call.rid.status(Code::PermissionDenied, DENIED.to_owned()))
        }
    }

    /// Authorizes reading the audit log as `action`. Of the residency guard only the caller's
    /// region applies (the log is not on a key's HSM). Not recorded in the audit log: reading
    /// it is not a key operation; the decision is logged for operators.
    pub(crate) fn authorize_audit(
        &self,
        call: &CallContext,
        action: AuditAction,
    ) -> Result<(), Status> {
        let rid = &call.rid;
        if let Some(rule) = self.caller_region_violation(call) {
            tracing::info!(request_id = %rid, action = action.as_str(), rule, "residency guard denied");
            return Err(rid.status(Code::PermissionDenied, format!("residency: {rule}")));
        }
        let decision = call
            .policy
            .decide_audit(&call.principal, action)
            .map_err(|e| {
                tracing::error!(request_id = %rid, error = %e, "policy input error");
                rid.status(Code::PermissionDenied, DENIED.to_owned())
            })?;
        tracing::info!(request_id = %rid, action = action.as_str(), allowed = decision.allowed,
            subject = %call.principal.subject, reasons = ?decision.reasons,
            policy_sha256 = %decision.policy_sha256, "audit read decision");
        if decision.allowed {
            Ok(())
        } else {
            Err(rid.status(Code::PermissionDenied, DENIED.to_owned()))
        }
    }

    /// The residency rule a call breaks, if any. Not configurable away: it runs before policy.
    pub(super) fn residency_violation(
        &self,
        call: &CallContext,
        key: &KeyFacts<'_>,
    ) -> Option<&'static str> {
        let r = &self.residency;
        if !r.allowed_jurisdictions.contains(key.hsm_jurisdiction) {
            return Some("the key's HSM jurisdiction is not in allowed_jurisdictions");
        }
        self.caller_region_violation(call)
    }

    fn caller_region_violation(&self, call: &CallContext) -> Option<&'static str> {
        let r = &self.residency;
        if r.require_caller_region
            && !call
                .principal
                .region
                .as_deref()
                .is_some_and(|region| r.region_allowed(region))
        {
            return Some("the caller's region is not in allowed_regions");
        }
        None
    }
}
