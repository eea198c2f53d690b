//! The audit hook of every handler: a [`Recorder`] collects the facts of one call (caller, key,
//! context, version, lease) while the handler runs, then [`Recorder::finish`] appends one record
//! — granted or refused — and releases the response only once that record is durable.
//! An append failure replaces the response with UNAVAILABLE: fail closed.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use crate::audit::{AuditLog, AuditPrincipal, AuditRecord, Decision, Op};
use crate::keys::KeyService;
use crate::keys::context::EncryptionContext;

use super::{ApiState, CallContext, CallFacts, REQUEST_ID_HEADER, RequestId, status};

/// How long a call's work (authentication, policy, HSM, catalog) may take before it is refused
/// with `UNAVAILABLE`.
pub(crate) const WORK_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);
/// How long the audit append of a call may take; with [`WORK_BUDGET`], a call answers within
/// 5 s whatever is down (`docs/high-availability.md`).
const APPEND_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// Facts of one call, appended to the audit log when it ends.
pub(crate) struct Recorder {
    record: AuditRecord,
    log: Arc<dyn AuditLog>,
    metrics: Arc<crate::http::metrics::Metrics>,
    started: std::time::Instant,
    /// What authorization found (policy reasons, the key's HSM), once the call is authenticated.
    facts: Option<Arc<CallFacts>>,
    /// Where a granted release's lease row goes after its record.
    leases: crate::keys::leases::LeaseWriter,
}

impl ApiState {
    /// A recorder for one call of `op`.
    pub(crate) fn recorder(&self, op: Op) -> Recorder {
        let mut record = AuditRecord::new(op, String::new(), self.replica_id.clone());
        // The policy in force when the call arrived, on every record (allowed or not).
        self.policy
            .current()
            .sha256()
            .clone_into(&mut record.policy_sha256);
        Recorder {
            record,
            log: self.audit.clone(),
            metrics: self.metrics.clone(),
            started: std::time::Instant::now(),
            facts: None,
            leases: self.keys.leases().clone(),
        }
    }
}

impl Recorder {
    /// [`ApiState::begin`], remembering who called.
    pub(crate) async fn begin<T>(
        &mut self,
        state: &ApiState,
        req: &Request<T>,
    ) -> Result<CallContext, Status> {
        let call = state.begin(req).await?;
        self.record.request_id = call.rid.to_string();
        // The snapshot that will decide (a reload may have happened since the recorder began).
        call.policy
            .sha256()
            .clone_into(&mut self.record.policy_sha256);
        self.record.principal = Some(AuditPrincipal::from(&call.principal));
        self.facts = Some(call.facts.clone());
        Ok(call)
    }

    /// The API surface the call came through (gRPC unless said otherwise).
    pub(crate) fn surface(&mut self, surface: crate::audit::Surface) {
        self.record.surface = surface;
    }

    /// The key the call is about.
    pub(crate) fn key(&mut self, name: &str) {
        self.record.key_name = Some(name.to_owned());
    }

    /// The key version used.
    pub(crate) fn version(&mut self, version: u32) {
        self.record.key_version = Some(version);
    }

    /// The HSM holding the key, with its jurisdiction.
    pub(crate) fn hsm(&mut self, keys: &KeyService, hsm_id: &str) {
        self.record.hsm_id = Some(hsm_id.to_owned());
        self.record.hsm_jurisdiction = keys.hsm_info(hsm_id).map(|h| h.jurisdiction.clone());
    }

    /// The encryption context.
    pub(crate) fn context(&mut self, ctx: &EncryptionContext) {
        self.record.encryption_context = ctx
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    }

    /// The lease of released key material.
    pub(crate) fn lease(&mut self, id: &str) {
        self.record.lease_id = Some(id.to_owned());
    }

    /// The refusal of a call whose work overran [`WORK_BUDGET`].
    pub(crate) fn over_budget(&self) -> Status {
        RequestId(self.record.request_id.clone()).status(
            Code::Unavailable,
            "the catalog or HSM did not answer in time; retry later".to_owned(),
        )
    }

    /// Appends the record of this call; returns `result` only if that worked.
    pub(crate) async fn finish<T>(
        mut self,
        result: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        let metadata = match &result {
            Ok(r) => r.metadata(),
            Err(s) => s.metadata(),
        };
        let rid = metadata
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| self.record.request_id.clone(), str::to_owned);
        self.record.request_id.clone_from(&rid);
        match &result {
            Ok(_) => {
                self.record.decision = Decision::Allow;
                "ok".clone_into(&mut self.record.outcome.code);
            }
            Err(s) => {
                self.record.decision = decision(s.code());
                self.record.outcome.code = code_name(s.code());
                // Status messages are written to be safe for callers: no tokens, no key bytes.
                self.record.reasons = vec![s.message().to_owned()];
            }
        }
        if let Some(facts) = &self.facts {
            // The policies that decided: the permits of an allow, the forbids of a deny.
            if let Some(d) = facts.decision.get() {
                let ids = d.reasons.iter().map(|id| format!("policy:{id}"));
                self.record.reasons.extend(ids);
            }
            if let (None, Some((id, jurisdiction))) = (&self.record.hsm_id, facts.hsm.get()) {
                self.record.hsm_id = Some(id.clone());
                self.record.hsm_jurisdiction.clone_from(jurisdiction);
            }
        }
        let (surface, method) = (
            self.record.surface.as_str(),
            format!("{:?}", self.record.op),
        );
        // A granted release carries the ticket its gate left: the lease is recorded after the
        // record (or, by the PostgreSQL log, with it), and that log checks the gate again.
        let ticket = match (&result, &self.facts) {
            (Ok(_), Some(facts)) => facts
                .ticket
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take(),
            _ => None,
        };
        let append = async {
            match ticket {
                Some(ticket) => {
                    self.record.lease_expires_at = ticket.lease.as_ref().map(|l| l.expires_at);
                    self.log.append_release(self.record, ticket).await
                }
                None => self.log.append(self.record).await.map(|i| (i, None)),
            }
        };
        // An append that does not finish in time refuses the call; the record may still land
        // (then it says the operation was granted although nothing was released — the log may
        // show more than happened, never less).
        let appended = tokio::time::timeout(APPEND_BUDGET, append)
            .await
            .unwrap_or_else(|_| {
                Err(crate::audit::AuditError::Database(
                    "append timed out".into(),
                ))
            });
        let result = match appended {
            Ok((index, lease)) => {
                if let Some(lease) = lease {
                    self.leases.push(lease, index).await;
                }
                result
            }
            Err(e) => Err(status::audit_error(&e, &RequestId(rid))),
        };
        let code = match &result {
            Ok(_) => "ok".to_owned(),
            Err(s) => code_name(s.code()),
        };
        self.metrics
            .request(surface, &method, &code, self.started.elapsed());
        result
    }
}

/// Refusals of the request itself are denials; failures on our side (HSM, catalog) happened
/// after the request was allowed.
fn decision(code: Code) -> Decision {
    match code {
        Code::Unavailable
        | Code::Internal
        | Code::Unknown
        | Code::Aborted
        | Code::DeadlineExceeded
        | Code::DataLoss
        | Code::Cancelled => Decision::Allow,
        _ => Decision::Deny,
    }
}

/// `PermissionDenied` → `permission_denied`.
fn code_name(code: Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_snake_case() {
        assert_eq!(code_name(Code::PermissionDenied), "permission_denied");
        assert_eq!(code_name(Code::Unauthenticated), "unauthenticated");
        assert_eq!(decision(Code::InvalidArgument), Decision::Deny);
        assert_eq!(decision(Code::Unavailable), Decision::Allow);
    }
}
