//! `Audit` service calls on [`Client`]: the records (`Watch`), the newest signed checkpoint,
//! and RFC 6962 proofs. Every response is checked for shape (32-byte hashes, a leaf hash that
//! matches its record, consecutive indices); whether a proof holds is for [`super::proof`].

use keybroker_proto::v1 as pb;
use keybroker_proto::v1::audit_client::AuditClient;
use tonic::transport::Channel;

use super::proof::{Hash, leaf_hash};
use crate::{Client, ClientError};

/// One record of the audit log as the broker sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its index.
    pub index: u64,
    /// The canonical JSON bytes that are hashed into the tree.
    pub record: Vec<u8>,
    /// `SHA-256(0x00 || record)`, checked on receipt.
    pub leaf_hash: Hash,
}

/// The broker's newest signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The signed note text.
    pub note: String,
    /// The verifier key the broker says signed it (trust on first use: compare it with the
    /// one published out of band).
    pub vkey: String,
}

fn malformed(problem: &'static str, request_id: &str) -> ClientError {
    ClientError::MalformedResponse {
        problem,
        request_id: request_id.to_owned(),
    }
}

fn to_hashes(raw: Vec<Vec<u8>>, rid: &str) -> Result<Vec<Hash>, ClientError> {
    if raw.len() > 64 {
        return Err(malformed("proof longer than 64 hashes", rid));
    }
    raw.into_iter()
        .map(|h| {
            Hash::try_from(h.as_slice()).map_err(|_| malformed("proof hash is not 32 bytes", rid))
        })
        .collect()
}

/// A `Watch` stream: yields entries in index order, checking each one.
#[derive(Debug)]
pub struct AuditStream {
    inner: tonic::Streaming<pb::AuditEntry>,
    next: u64,
    request_id: String,
}

impl AuditStream {
    /// The next record; `None` at the end of a stream without `follow`.
    ///
    /// # Errors
    /// `Status` (e.g. RESOURCE_EXHAUSTED naming the index to resume from), `MalformedResponse`
    /// for an entry out of order or whose leaf hash does not match its record.
    pub async fn next(&mut self) -> Result<Option<AuditEntry>, ClientError> {
        let rid = self.request_id.as_str();
        let Some(e) = self
            .inner
            .message()
            .await
            .map_err(|s| ClientError::from_status(&s, rid))?
        else {
            return Ok(None);
        };
        if e.index != self.next {
            return Err(malformed("audit entries out of order", rid));
        }
        let hash = leaf_hash(&e.record_json);
        if e.leaf_hash != hash {
            return Err(malformed(
                "audit entry leaf hash does not match its record",
                rid,
            ));
        }
        self.next += 1;
        Ok(Some(AuditEntry {
            index: e.index,
            record: e.record_json,
            leaf_hash: hash,
        }))
    }
}

impl Client {
    fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.channel())
    }

    /// Streams audit records from `from`; with `follow`, keeps waiting for new ones.
    ///
    /// # Errors
    /// `Status` (`PERMISSION_DENIED` without the `WatchAudit` permission), token-file errors.
    pub async fn watch_audit(&self, from: u64, follow: bool) -> Result<AuditStream, ClientError> {
        let (req, rid) = self
            .request(pb::WatchRequest {
                from_index: from,
                follow,
            })
            .await?;
        let inner = self
            .audit()
            .watch(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(AuditStream {
            inner,
            next: from,
            request_id: rid,
        })
    }

    /// The newest signed checkpoint and the broker's verifier key.
    ///
    /// # Errors
    /// `Status` (`UNAVAILABLE` before the first checkpoint), token-file errors.
    pub async fn audit_checkpoint(&self) -> Result<SignedCheckpoint, ClientError> {
        let (req, rid) = self.request(pb::GetCheckpointRequest {}).await?;
        let cp = self
            .audit()
            .get_checkpoint(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(SignedCheckpoint {
            note: cp.note,
            vkey: cp.vkey,
        })
    }

    /// The inclusion proof of record `index` in the tree of `tree_size` records.
    ///
    /// # Errors
    /// `Status` (`INVALID_ARGUMENT` for an index or size out of range), `MalformedResponse`.
    pub async fn audit_inclusion_proof(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<Vec<Hash>, ClientError> {
        let (req, rid) = self
            .request(pb::GetInclusionProofRequest { index, tree_size })
            .await?;
        let p = self
            .audit()
            .get_inclusion_proof(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        to_hashes(p.hashes, &rid)
    }

    /// The consistency proof from the tree of `old_size` records to that of `new_size`.
    ///
    /// # Errors
    /// `Status` (`INVALID_ARGUMENT` for sizes out of range), `MalformedResponse`.
    pub async fn audit_consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Hash>, ClientError> {
        let (req, rid) = self
            .request(pb::GetConsistencyProofRequest { old_size, new_size })
            .await?;
        let p = self
            .audit()
            .get_consistency_proof(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        to_hashes(p.hashes, &rid)
    }
}
