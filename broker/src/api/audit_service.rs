//! `keybroker.v1.Audit`: reading the audit log — the records (`Watch`), the newest signed
//! checkpoint and RFC 6962 proofs against it.
//!
//! Every call is authenticated and authorized by policy (`WatchAudit` for the records,
//! `ReadAuditProofs` for checkpoints and proofs) with the caller-region rule of the residency
//! guard. Reading the log is not a key operation, so these calls are not recorded in it: a
//! record per read would make every verification grow the log it verifies. Decisions are
//! logged for operators with the request id.

use std::sync::Arc;

use keybroker_proto::v1 as pb;
use keybroker_proto::v1::audit_server::Audit;
use tokio::sync::Semaphore;
use tonic::{Code, Request, Response, Status};

use super::audit_watch::{self, Subscription, WatchStream};
use super::status::invalid;
use super::{ApiState, RequestId};
use crate::policy::AuditAction;
use keybroker_formats::tlog::Hash;

/// Most `Watch` streams open at once.
const MAX_WATCHERS: usize = 64;

/// The Audit service.
#[derive(Debug)]
pub(crate) struct AuditApi {
    state: Arc<ApiState>,
    watchers: Arc<Semaphore>,
}

impl AuditApi {
    pub(crate) fn new(state: Arc<ApiState>) -> Self {
        Self {
            state,
            watchers: Arc::new(Semaphore::new(MAX_WATCHERS)),
        }
    }

    /// Authenticates and authorizes one call.
    async fn admit<T>(&self, req: &Request<T>, action: AuditAction) -> Result<RequestId, Status> {
        let call = self.state.begin(req).await?;
        self.state.authorize_audit(&call, action)?;
        Ok(call.rid)
    }

    /// The published size: proofs are served for trees up to it.
    fn published(&self) -> u64 {
        self.state.audit.head().0
    }
}

fn hashes(proof: Vec<Hash>) -> Vec<Vec<u8>> {
    proof.into_iter().map(|h| h.to_vec()).collect()
}

#[tonic::async_trait]
impl Audit for AuditApi {
    type WatchStream = WatchStream;

    #[tracing::instrument(skip_all, name = "Audit.Watch")]
    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let rid = self.admit(&req, AuditAction::WatchAudit).await?;
        let r = req.into_inner();
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            rid.status(
                Code::ResourceExhausted,
                format!("too many audit watchers (at most {MAX_WATCHERS}); retry later"),
            )
        })?;
        tracing::info!(request_id = %rid, from = r.from_index, follow = r.follow, "audit watch");
        let stream = audit_watch::start(Subscription {
            log: self.state.audit.clone(),
            from: r.from_index,
            follow: r.follow,
            rid: rid.clone(),
            permit,
        });
        Ok(rid.response(stream))
    }

    #[tracing::instrument(skip_all, name = "Audit.GetCheckpoint")]
    async fn get_checkpoint(
        &self,
        req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        let rid = self.admit(&req, AuditAction::ReadAuditProofs).await?;
        let signed = self.state.checkpoint.get().ok_or_else(|| {
            rid.status(
                Code::Unavailable,
                "no audit checkpoint signed yet; retry later".to_owned(),
            )
        })?;
        Ok(rid.response(pb::Checkpoint {
            note: signed.note,
            origin: signed.origin,
            tree_size: signed.size,
            root_hash: signed.root.to_vec(),
            vkey: signed.vkey,
        }))
    }

    #[tracing::instrument(skip_all, name = "Audit.GetInclusionProof")]
    async fn get_inclusion_proof(
        &self,
        req: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        let rid = self.admit(&req, AuditAction::ReadAuditProofs).await?;
        let r = req.into_inner();
        let published = self.published();
        if r.tree_size > published {
            return Err(invalid(
                format!(
                    "tree_size {} is past the published log ({published} records)",
                    r.tree_size
                ),
                &rid,
            ));
        }
        if r.index >= r.tree_size {
            return Err(invalid(
                format!(
                    "index {} is not in a tree of {} records",
                    r.index, r.tree_size
                ),
                &rid,
            ));
        }
        let proof = self
            .state
            .audit
            .inclusion_proof(r.index, r.tree_size)
            .ok_or_else(|| invalid("no such proof", &rid))?;
        Ok(rid.response(pb::InclusionProof {
            index: r.index,
            tree_size: r.tree_size,
            hashes: hashes(proof),
        }))
    }

    #[tracing::instrument(skip_all, name = "Audit.GetConsistencyProof")]
    async fn get_consistency_proof(
        &self,
        req: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        let rid = self.admit(&req, AuditAction::ReadAuditProofs).await?;
        let r = req.into_inner();
        let published = self.published();
        if r.new_size > published {
            return Err(invalid(
                format!(
                    "new_size {} is past the published log ({published} records)",
                    r.new_size
                ),
                &rid,
            ));
        }
        if r.old_size == 0 || r.old_size > r.new_size {
            return Err(invalid("need 0 < old_size <= new_size".to_owned(), &rid));
        }
        let proof = self
            .state
            .audit
            .consistency_proof(r.old_size, r.new_size)
            .ok_or_else(|| invalid("no such proof", &rid))?;
        Ok(rid.response(pb::ConsistencyProof {
            old_size: r.old_size,
            new_size: r.new_size,
            hashes: hashes(proof),
        }))
    }
}
