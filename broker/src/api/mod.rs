//! gRPC services: `DataKeys`, `KeyAdmin`, `Audit`, health and reflection, and the request context every
//! call goes through (request id, authentication).

pub(crate) mod audit;
mod audit_service;
mod audit_watch;
mod authz;
mod authz_sign;
mod convert;
pub(crate) mod datakeys;
mod keyadmin;
pub(crate) mod request_span;
mod signing;
mod status;
mod wrap;

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use crate::config::ResidencyConfig;
use crate::identity::{Authenticator, Principal};
use crate::keys::{Caller, KeyService};
use crate::policy::{Decision, PolicyEngine, PolicySlot};

pub(crate) use datakeys::DataKeysApi;
pub(crate) use keyadmin::KeyAdminApi;

/// Largest gRPC request the broker decodes: the largest SEAL envelope plus headroom.
const MAX_MESSAGE: usize = 128 * 1024;

/// Header carrying the request id, on every response and error.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Shared state of the gRPC services.
#[derive(Debug)]
pub(crate) struct ApiState {
    pub(crate) keys: KeyService,
    pub(crate) identity: Authenticator,
    pub(crate) audit: Arc<dyn crate::audit::AuditLog>,
    pub(crate) replica_id: String,
    pub(crate) policy: PolicySlot,
    pub(crate) residency: ResidencyConfig,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// The newest signed checkpoint (served by `Audit.GetCheckpoint`).
    pub(crate) checkpoint: crate::audit::checkpoint::Latest,
    /// Attestation verifiers and nonces (`[attestation]`), when configured.
    pub(crate) attestation: Option<Arc<crate::attestation::Attestation>>,
}

/// A request id: the caller's (if well-formed) or a fresh UUID.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(String);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RequestId {
    fn from_request<T>(req: &Request<T>) -> Self {
        let given = req
            .metadata()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| request_span::well_formed(v));
        Self(given.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned))
    }

    /// A status carrying this request id.
    pub(crate) fn status(&self, code: Code, msg: String) -> Status {
        let mut s = Status::new(code, msg);
        if let Ok(v) = MetadataValue::try_from(self.0.as_str()) {
            s.metadata_mut().insert(REQUEST_ID_HEADER, v);
        }
        s
    }

    /// A response carrying this request id.
    pub(crate) fn response<T>(&self, body: T) -> tonic::Response<T> {
        let mut r = tonic::Response::new(body);
        if let Ok(v) = MetadataValue::try_from(self.0.as_str()) {
            r.metadata_mut().insert(REQUEST_ID_HEADER, v);
        }
        r
    }
}

/// What another surface (the transit endpoint) concluded about the caller, put in a request's
/// extensions: the principal, or why none was accepted (a fixed phrase, safe to return and to
/// record). Extensions never come from the wire, so a gRPC caller cannot set it.
#[derive(Debug, Clone)]
pub(crate) struct PreAuthenticated(pub(crate) Result<Principal, &'static str>);

/// An authenticated call.
pub(crate) struct CallContext {
    pub(crate) rid: RequestId,
    pub(crate) principal: Principal,
    /// The policy in force when the call arrived: it decides and is named in the record.
    pub(crate) policy: Arc<PolicyEngine>,
    /// What authorization learnt, shared with the call's audit recorder.
    pub(crate) facts: Arc<CallFacts>,
    /// The attestation result sent with the call (`x-keybroker-attestation`), or why the
    /// metadata is unusable; checked by the DataKeys authorization only.
    pub(crate) attestation: Option<Result<String, &'static str>>,
}

/// Facts authorization establishes for the audit record, each set once per call.
#[derive(Debug, Default)]
pub(crate) struct CallFacts {
    /// The policy decision.
    pub(crate) decision: std::sync::OnceLock<Decision>,
    /// The key's HSM id and that HSM's jurisdiction, from the catalog.
    pub(crate) hsm: std::sync::OnceLock<(String, Option<String>)>,
    /// What a release whose gate opened leaves for the audit record.
    pub(crate) ticket: crate::keys::leases::TicketSlot,
    /// What the call's attestation result said, and the reason it was refused, if it was.
    pub(crate) attestation: std::sync::OnceLock<(crate::audit::AttestationAudit, Option<String>)>,
}

impl CallContext {
    pub(crate) fn caller(&self) -> Caller {
        Caller {
            issuer: self.principal.issuer.clone(),
            subject: self.principal.subject.clone(),
            job_id: self.principal.job_id.clone(),
            ticket: self.facts.ticket.clone(),
        }
    }
}

impl ApiState {
    /// Request id and authentication: every call, dev mode included, needs a valid JWT and/or
    /// client certificate, as `[identity] mode` says.
    pub(crate) async fn begin<T>(&self, req: &Request<T>) -> Result<CallContext, Status> {
        let rid = RequestId::from_request(req);
        if let Some(PreAuthenticated(auth)) = req.extensions().get::<PreAuthenticated>() {
            return match auth {
                Ok(principal) => Ok(CallContext {
                    rid,
                    principal: principal.clone(),
                    policy: self.policy.current(),
                    facts: Arc::default(),
                    attestation: None,
                }),
                Err(why) => {
                    tracing::info!(request_id = %rid, reason = why, "unauthenticated request");
                    Err(rid.status(Code::Unauthenticated, (*why).to_owned()))
                }
            };
        }
        // Two `authorization` values name two callers (or a caller and garbage): which one a
        // proxy, the policy or the audit record would believe is ambiguous, so neither is.
        if req
            .metadata()
            .get_all("authorization")
            .iter()
            .nth(1)
            .is_some()
        {
            tracing::info!(request_id = %rid, "unauthenticated request: more than one authorization value");
            return Err(rid.status(
                Code::Unauthenticated,
                "more than one authorization value".to_owned(),
            ));
        }
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        // The TLS layer put the verified client chain here (mTLS modes); leaf first.
        let certs = req.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        let now = unix_now();
        let principal = self
            .identity
            .authenticate(token, leaf, now)
            .await
            .map_err(|e| status::identity_error(&e, &rid))?;
        Ok(CallContext {
            rid,
            principal,
            policy: self.policy.current(),
            facts: Arc::default(),
            attestation: attestation_metadata(req),
        })
    }
}

/// The current unix time in seconds, as identity and attestation checks take it.
pub(crate) fn unix_now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

/// The attestation result of a request: none, one usable value, or why not (two values, not
/// ASCII). Its size is checked by the verifier.
fn attestation_metadata<T>(req: &Request<T>) -> Option<Result<String, &'static str>> {
    let mut values = req
        .metadata()
        .get_all(crate::attestation::METADATA_KEY)
        .iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err("more than one attestation result"));
    }
    Some(
        first
            .to_str()
            .map(|t| t.trim().to_owned())
            .map_err(|_| "attestation result is not ASCII"),
    )
}

/// Builds the tonic router with every service the broker serves.
pub(crate) fn services<H>(
    state: Arc<ApiState>,
    health: tonic_health::pb::health_server::HealthServer<H>,
) -> Result<tonic::service::Routes, tonic_reflection::server::Error>
where
    H: tonic_health::pb::health_server::Health,
{
    use keybroker_proto::v1::audit_server::AuditServer;
    use keybroker_proto::v1::data_keys_server::DataKeysServer;
    use keybroker_proto::v1::key_admin_server::KeyAdminServer;
    use keybroker_proto::v1::signing_server::SigningServer;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keybroker_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keybroker_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok(tonic::service::Routes::new(health)
        .add_service(
            DataKeysServer::new(DataKeysApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            KeyAdminServer::new(KeyAdminApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            SigningServer::new(signing::SigningApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(AuditServer::new(audit_service::AuditApi::new(state)))
        .add_service(reflection)
        .add_service(reflection_alpha))
}
