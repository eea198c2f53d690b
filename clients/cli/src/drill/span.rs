//! The audit records that cover a drill. Every call of a drill carries the request id
//! `drill-<drill id>-<n>` (`Client::with_request_id_prefix`); at the end the drill makes one
//! last audited call (GetKey) and follows the log (`Audit.Watch`) from the checkpoint size seen
//! at its start until that call's record arrives. The report then names the exact indices of
//! the drill's records: an auditor fetches them, with inclusion proofs, from a signed
//! checkpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use keybroker_client::Client;
use keybroker_client::audit::note::{VerifierKey, verify_checkpoint};
use serde::Serialize;

/// How long the drill waits for its records to be published.
const WAIT: Duration = Duration::from_secs(15);
/// Records scanned at most (a drill starting from an old checkpoint of a busy log).
const MAX_SCAN: u64 = 1_000_000;

/// Where a drill's records are in the audit log.
#[derive(Debug, Default, Serialize)]
pub(crate) struct AuditSpan {
    /// Every call of the drill has a request id starting with this.
    pub(crate) request_id_prefix: String,
    /// Index of the first record of the drill.
    pub(crate) first_index: Option<u64>,
    /// Index of the last record of the drill (its closing GetKey).
    pub(crate) last_index: Option<u64>,
    /// The drill's records, by index (other callers' records may lie between them).
    pub(crate) indices: Vec<u64>,
    /// Records by `op:decision`.
    pub(crate) by_op: BTreeMap<String, u64>,
    /// The closing record was seen, so every call the drill made is covered.
    pub(crate) complete: bool,
    /// Why the records could not be read (e.g. the operator lacks `WatchAudit`).
    pub(crate) error: Option<String>,
}

/// A drill's tagged client and the log index to search from.
pub(crate) struct Tagged {
    pub(crate) client: Client,
    prefix: String,
    from: u64,
}

impl Tagged {
    /// Tags `c`'s calls with `drill-<drill_id>`, and notes where the log is now (the newest
    /// checkpoint's size; 0 when there is none yet or it does not verify).
    pub(crate) async fn new(
        c: &Client,
        drill_id: &str,
    ) -> Result<Self, keybroker_client::ClientError> {
        let prefix = format!("drill-{drill_id}");
        let client = c.with_request_id_prefix(&prefix)?;
        let from = match c.audit_checkpoint().await {
            Ok(cp) => VerifierKey::parse(&cp.vkey)
                .ok()
                .and_then(|k| verify_checkpoint(&k, &cp.note).ok())
                .map_or(0, |c| c.size),
            Err(_) => 0,
        };
        Ok(Self {
            client,
            prefix,
            from,
        })
    }

    /// Makes the closing call on `key` and collects the drill's records.
    pub(crate) async fn collect(&self, key: &str) -> AuditSpan {
        let mut span = AuditSpan {
            request_id_prefix: self.prefix.clone(),
            ..AuditSpan::default()
        };
        let Some(closing) = self.client.next_request_id() else {
            span.error = Some("calls were not tagged".into());
            return span;
        };
        if let Err(e) = self.client.get_key(key).await {
            span.error = Some(format!("closing GetKey failed: {e}"));
            return span;
        }
        if let Err(e) = tokio::time::timeout(WAIT, self.follow(&closing, &mut span)).await {
            span.error = Some(format!(
                "the drill's last record was not published within {}s ({e})",
                WAIT.as_secs()
            ));
        }
        span
    }

    async fn follow(&self, closing: &str, span: &mut AuditSpan) {
        let mut stream = match self.client.watch_audit(self.from, true).await {
            Ok(s) => s,
            Err(e) => {
                span.error = Some(format!("cannot read the audit log: {e}"));
                return;
            }
        };
        let tag = format!("{}-", self.prefix);
        loop {
            let entry = match stream.next().await {
                Ok(Some(e)) => e,
                Ok(None) => {
                    span.error = Some("audit stream ended early".into());
                    return;
                }
                Err(e) => {
                    span.error = Some(format!("audit stream failed: {e}"));
                    return;
                }
            };
            if entry.index >= self.from.saturating_add(MAX_SCAN) {
                span.error = Some(format!("gave up after scanning {MAX_SCAN} records"));
                return;
            }
            let Ok(record) = serde_json::from_slice::<serde_json::Value>(&entry.record) else {
                continue;
            };
            let Some(rid) = record["request_id"].as_str() else {
                continue;
            };
            if !rid.starts_with(&tag) {
                continue;
            }
            span.first_index.get_or_insert(entry.index);
            span.last_index = Some(entry.index);
            span.indices.push(entry.index);
            let op = format!(
                "{}:{}",
                record["op"].as_str().unwrap_or("?"),
                record["decision"].as_str().unwrap_or("?")
            );
            *span.by_op.entry(op).or_default() += 1;
            if rid == closing {
                span.complete = true;
                return;
            }
        }
    }
}

/// One line for the text report.
pub(crate) fn text(span: &AuditSpan) -> String {
    match (span.first_index, span.last_index) {
        (Some(first), Some(last)) => {
            let ops: Vec<String> = span.by_op.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "{} records at indices {first}..={last}{} (request ids {}-*): {}{}",
                span.indices.len(),
                if span.indices.len() as u64 == last - first + 1 {
                    ""
                } else {
                    ", interleaved with other callers'"
                },
                span.request_id_prefix,
                ops.join(", "),
                span.error
                    .as_ref()
                    .map_or_else(String::new, |e| format!(" — INCOMPLETE: {e}")),
            )
        }
        _ => format!(
            "not found (request ids {}-*): {}",
            span.request_id_prefix,
            span.error.as_deref().unwrap_or("no record")
        ),
    }
}
