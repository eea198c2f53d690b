//! Fetching a signature's transparency receipt from the broker: wait for a checkpoint that
//! covers the record, then fetch the record and its inclusion proof, and check them (the
//! check itself is `keybroker_formats::signing::bundle`'s, the same one offline verifiers run).

use std::time::{Duration, Instant};

use keybroker_formats::signing::bundle::Receipt;
use keybroker_formats::tlog::note::{VerifierKey, verify_checkpoint};

use crate::{Client, ClientError};

impl Client {
    /// The receipt of audit record `index`: waits (up to `wait`) for a checkpoint that covers
    /// it — checkpoints follow within about a second — then fetches the record and its
    /// inclusion proof and checks them against the checkpoint under the broker's key.
    ///
    /// # Errors
    /// `Status` (`PERMISSION_DENIED` without `WatchAudit`/`ReadAuditProofs`), or
    /// `MalformedResponse` when no checkpoint covers the record in time or the proof fails.
    pub async fn receipt(&self, index: u64, wait: Duration) -> Result<Receipt, ClientError> {
        let bad = |problem: &'static str| ClientError::MalformedResponse {
            problem,
            request_id: String::new(),
        };
        let deadline = Instant::now() + wait;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let (cp, size) = loop {
            tick.tick().await;
            match self.audit_checkpoint().await {
                Ok(cp) => {
                    let vkey = VerifierKey::parse(&cp.vkey)
                        .map_err(|_| bad("the broker's verifier key does not parse"))?;
                    let size = verify_checkpoint(&vkey, &cp.note)
                        .map_err(|_| bad("the broker's checkpoint does not verify"))?
                        .size;
                    if size > index {
                        break (cp, size);
                    }
                }
                Err(e) if e.code() == Some(tonic::Code::Unavailable) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(bad("no checkpoint covers the signature's record yet"));
            }
        };
        let mut stream = self.watch_audit(index, false).await?;
        let entry = stream
            .next()
            .await?
            .ok_or_else(|| bad("the broker sent no record at the signature's index"))?;
        drop(stream);
        let proof = self.audit_inclusion_proof(index, size).await?;
        let record = String::from_utf8(entry.record).map_err(|_| bad("the record is not UTF-8"))?;
        let receipt = Receipt {
            index,
            record,
            tree_size: size,
            inclusion_proof: proof.iter().map(hex::encode).collect(),
            checkpoint: cp.note,
            vkey: cp.vkey,
        };
        receipt
            .verify(None)
            .map_err(|_| bad("the signature's receipt does not verify"))?;
        Ok(receipt)
    }
}
