//! The audit hook of every handler: a [`Recorder`] collects the facts of one call (caller, key,
//! context, version, lease) while the handler runs, then [`Recorder::finish`] appends one record
//! — granted or refused — and releases the response only once that record is durable.
//! An append failure replaces the response with UNAVAILABLE: fail closed.

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use crate::audit::record::MAX_RECORD_BYTES;
use crate::audit::{AuditError, AuditLog, AuditPrincipal, AuditRecord, Decision, Op};
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
    metrics: Arc<crate::metrics::Metrics>,
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

    /// The key a call names, validated (INVALID_ARGUMENT otherwise) and noted on the record:
    /// the opening every call on a named key shares.
    pub(crate) fn named_key(
        &mut self,
        name: &str,
        rid: &RequestId,
    ) -> Result<crate::keys::name::KeyName, Status> {
        let name = super::convert::key_name(name, rid)?;
        self.key(name.as_str());
        Ok(name)
    }

    /// A call's encryption context, validated and noted on the record.
    pub(crate) fn encryption_context(
        &mut self,
        context: std::collections::HashMap<String, String>,
        rid: &RequestId,
    ) -> Result<EncryptionContext, Status> {
        let ctx = super::convert::context(context, rid)?;
        self.context(&ctx);
        Ok(ctx)
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

    /// What AWS KMS said about an XKS call.
    pub(crate) fn xks(&mut self, facts: crate::audit::XksFacts) {
        self.record.xks = Some(facts);
    }

    /// The lease of released key material.
    pub(crate) fn lease(&mut self, id: &str) {
        self.record.lease_id = Some(id.to_owned());
    }

    /// What a signature is over (Sign, SignDsse): set before authorization, so refusals name
    /// what was asked too.
    pub(crate) fn signed(&mut self) -> &mut crate::audit::SignedFacts {
        self.record.signed.get_or_insert_with(Default::default)
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
        self,
        result: Result<Response<T>, Status>,
    ) -> Result<Response<T>, Status> {
        self.finish_indexed(result, |_, _| {}).await
    }

    /// [`Recorder::finish`], then `set_index` puts the record's log index into a granted
    /// response (a signature's receipt points at its record).
    pub(crate) async fn finish_indexed<T>(
        mut self,
        result: Result<Response<T>, Status>,
        set_index: impl FnOnce(&mut T, u64),
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
            if let Some((audit, refused)) = facts.attestation.get() {
                self.record.attestation = Some(audit.clone());
                if let Some(why) = refused {
                    self.record.reasons.push(format!("attestation: {why}"));
                }
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
        let rid = RequestId(rid);
        let result = match fit(&mut self.record, &rid) {
            Some(refused) => Err(refused),
            None => result,
        };
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
                result.map(|mut r| {
                    set_index(r.get_mut(), index);
                    r
                })
            }
            Err(e) => Err(status::audit_error(&e, &rid)),
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

/// Bytes of caller-sized fields above which [`fit`] encodes the record to check its size
/// (below, even all-escaped JSON stays within the cap; most records never pay for the check).
const CHECK_ABOVE: usize = MAX_RECORD_BYTES / 8;

/// Makes `record` fit [`MAX_RECORD_BYTES`]. Identity fields are already bounded
/// (`AuditPrincipal::from`), so an accepted request fits; if one still does not, the record
/// becomes the smaller record of its refusal (no context, one reason) and the returned status
/// (INVALID_ARGUMENT: retrying the same request cannot help) replaces the call's result.
fn fit(record: &mut AuditRecord, rid: &RequestId) -> Option<Status> {
    let principal = record.principal.as_ref().map_or(0, |p| {
        p.issuer.len()
            + p.subject.len()
            + [
                &p.spiffe_id,
                &p.namespace,
                &p.service_account,
                &p.job,
                &p.region,
                &p.cert_fingerprint,
            ]
            .iter()
            .map(|f| f.as_ref().map_or(0, String::len))
            .sum::<usize>()
    });
    let caller_sized = principal
        + record
            .encryption_context
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + record.reasons.iter().map(String::len).sum::<usize>()
        + record.key_name.as_ref().map_or(0, String::len)
        + record.signed.as_ref().map_or(0, signed_len);
    if caller_sized <= CHECK_ABOVE {
        return None;
    }
    match record.to_canonical_json() {
        Err(AuditError::RecordTooLarge { len }) => {
            tracing::warn!(request_id = %rid, len, "audit record over 16 KiB: refusing the request");
            const WHY: &str = "request too large to record in the audit log";
            record.encryption_context.clear();
            if let Some(signed) = &mut record.signed {
                signed.subjects.clear();
            }
            record.reasons = vec![WHY.to_owned()];
            record.decision = Decision::Deny;
            record.outcome.code = code_name(Code::InvalidArgument);
            record.lease_id = None;
            Some(rid.status(Code::InvalidArgument, WHY.to_owned()))
        }
        _ => None,
    }
}

/// Bytes of the caller-sized fields of a signature's facts.
fn signed_len(s: &crate::audit::SignedFacts) -> usize {
    [&s.artifact_name, &s.media_type, &s.predicate_type]
        .iter()
        .map(|f| f.as_ref().map_or(0, String::len))
        .sum::<usize>()
        + s.subjects
            .iter()
            .map(|sub| sub.name.len() + sub.digests.iter().map(String::len).sum::<usize>())
            .sum::<usize>()
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
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::identity::Principal;
    use crate::keys::context::EncryptionContext;
    use crate::keys::name::KeyName;

    #[test]
    fn code_names_are_snake_case() {
        assert_eq!(code_name(Code::PermissionDenied), "permission_denied");
        assert_eq!(code_name(Code::Unauthenticated), "unauthenticated");
        assert_eq!(decision(Code::InvalidArgument), Decision::Deny);
        assert_eq!(decision(Code::Unavailable), Decision::Allow);
    }

    /// The record the recorder makes of a call by `p` with `ctx` on `key`.
    fn record(p: &Principal, ctx: &EncryptionContext, key: &KeyName, reason: &str) -> AuditRecord {
        let mut r = AuditRecord::new(Op::GenerateDataKey, "r".repeat(64), "replica-a".into());
        r.principal = Some(AuditPrincipal::from(p));
        r.key_name = Some(key.as_str().to_owned());
        r.key_version = Some(u32::MAX);
        r.hsm_id = Some("softhsm-dev".into());
        r.hsm_jurisdiction = Some("EU".into());
        r.policy_sha256 = "f".repeat(64);
        r.lease_id = Some(uuid::Uuid::new_v4().to_string());
        r.encryption_context = ctx
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        r.reasons = vec![reason.to_owned(), "policy:allow-namespace-dev".into()];
        r
    }

    fn principal_of(field: &str) -> Principal {
        Principal {
            issuer: field.to_owned(),
            subject: field.to_owned(),
            namespace: Some(field.to_owned()),
            service_account: Some(field.to_owned()),
            pod: Some(field.to_owned()),
            spiffe_id: Some(field.to_owned()),
            job_id: Some(field.to_owned()),
            cluster: Some(field.to_owned()),
            region: Some(field.to_owned()),
            jurisdiction: Some(field.to_owned()),
            cert_fingerprint: Some(field.to_owned()),
        }
    }

    /// A string of up to `max` characters drawn from `alphabet` (a seed and a length: two
    /// values to generate, not one per character, so many large cases run in little time).
    fn text(alphabet: &'static [char], max: usize) -> impl Strategy<Value = String> {
        (any::<u64>(), 0..=max).prop_map(move |(mut seed, len)| {
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect()
        })
    }

    /// Characters that grow most in JSON, multi-byte ones, and plain ones.
    const HOSTILE: &[char] = &[
        '"',
        '\\',
        '\n',
        '\u{1}',
        '\u{7f}',
        '\u{2026}',
        '\u{1d11e}',
        'a',
        'Z',
        '0',
    ];
    /// What a context value may hold (no control characters), worst cases first.
    const VALUE: &[char] = &['"', '\\', '\u{e9}', '\u{20ac}', 'a', ' ', '~'];
    /// What a context key may hold.
    const KEY: &[char] = &['A', 'z', '0', '9', '.', '_', ':', '/', '-'];

    fn identity_field() -> impl Strategy<Value = String> {
        // Past the cut (128 bytes) by far; the 8 KiB a token allows is the fixed test below.
        text(HOSTILE, 2048)
    }

    fn context() -> impl Strategy<Value = EncryptionContext> {
        let value = text(VALUE, 256).prop_map(|mut s| {
            while s.len() > 256 {
                s.pop();
            }
            s
        });
        proptest::collection::hash_map(text(KEY, 256), value, 0..=16)
            .prop_filter_map("the API accepts it", |m: HashMap<String, String>| {
                EncryptionContext::from_map(m).ok()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever identity a verified token carries and whatever context the API accepts,
        /// the record fits the cap: the call is never refused for the record's size.
        #[test]
        fn any_accepted_request_makes_a_record_within_the_cap(
            fields in proptest::collection::vec(identity_field(), 11),
            ctx in context(),
            key in "[a-z0-9][a-z0-9._-]{0,127}",
            reason in text(&['a', ' ', '"', ':'], 300),
        ) {
            let p = Principal {
                issuer: fields[0].clone(),
                subject: fields[1].clone(),
                namespace: Some(fields[2].clone()),
                service_account: Some(fields[3].clone()),
                pod: Some(fields[4].clone()),
                spiffe_id: Some(fields[5].clone()),
                job_id: Some(fields[6].clone()),
                cluster: Some(fields[7].clone()),
                region: Some(fields[8].clone()),
                jurisdiction: Some(fields[9].clone()),
                cert_fingerprint: Some(fields[10].clone()),
            };
            let key = KeyName::parse(&key).map_err(|e| TestCaseError::reject(e.to_string()))?;
            let mut r = record(&p, &ctx, &key, &reason);
            let rid = RequestId("r".into());
            prop_assert!(fit(&mut r, &rid).is_none());
            let bytes = r.to_canonical_json().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(bytes.len() <= MAX_RECORD_BYTES);
        }
    }

    #[test]
    fn the_largest_accepted_request_fits_with_its_long_names_cut_and_hashed() {
        // Every limit at once: 16 context pairs of 256-byte keys and values that double in
        // JSON, and identity fields of 8 KiB that grow sixfold.
        let ctx: HashMap<String, String> = (0..16)
            .map(|i| (format!("{i:0>256}"), "\"".repeat(256)))
            .collect();
        let ctx = EncryptionContext::from_map(ctx).unwrap();
        let long = "\u{1}".repeat(8192);
        let key = KeyName::parse(&"k".repeat(128)).unwrap();
        let mut r = record(&principal_of(&long), &ctx, &key, &"x".repeat(300));
        assert!(fit(&mut r, &RequestId("r".into())).is_none());
        let bytes = r.to_canonical_json().unwrap();
        assert!(bytes.len() <= MAX_RECORD_BYTES, "{}", bytes.len());
        let subject = &r.principal.as_ref().unwrap().subject;
        assert!(
            subject.contains(crate::audit::record::CUT_MARKER),
            "{subject}"
        );
        assert_eq!(r.encryption_context.len(), 16, "the context is kept whole");
    }

    #[test]
    fn a_record_that_still_does_not_fit_becomes_a_smaller_refusal() {
        let key = KeyName::parse("datasets/a").unwrap();
        let mut r = record(&principal_of("ml"), &EncryptionContext::empty(), &key, "");
        r.reasons = vec!["x".repeat(MAX_RECORD_BYTES)];
        r.decision = Decision::Allow;
        let refused = fit(&mut r, &RequestId("r".into())).unwrap();
        assert_eq!(refused.code(), Code::InvalidArgument, "not retryable");
        assert_eq!(r.decision, Decision::Deny);
        assert_eq!(r.outcome.code, "invalid_argument");
        assert!(r.to_canonical_json().unwrap().len() < MAX_RECORD_BYTES);
        assert_eq!(
            r.key_name.as_deref(),
            Some("datasets/a"),
            "still says what was asked"
        );
    }
}
