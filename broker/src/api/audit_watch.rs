//! The stream behind `Audit.Watch`: a producer task per subscriber reads published records
//! from the log (never from the writer) into a small bounded buffer, and follows the published
//! size through a watch channel that the log updates without ever waiting for anyone. So a slow
//! or stuck subscriber costs only its own buffer; it never holds back key operations.
//!
//! A subscriber whose buffer stays full for [`STALL`] is cut: its next read is
//! RESOURCE_EXHAUSTED naming the index to resume from (the first record it did not receive).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use keybroker_proto::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::{Code, Status};

use super::RequestId;
use super::status::audit_error;
use crate::audit::AuditLog;
use keybroker_formats::tlog::leaf_hash;

/// Entries buffered per subscriber.
pub(crate) const BUFFER: usize = 64;
/// Records read from the log at a time.
const BATCH: usize = 256;
/// How long a subscriber may leave its full buffer unread before it is cut.
pub(crate) const STALL: Duration = Duration::from_secs(30);

/// One subscription: where to start and whether to follow.
pub(crate) struct Subscription {
    pub(crate) log: Arc<dyn AuditLog>,
    pub(crate) from: u64,
    pub(crate) follow: bool,
    pub(crate) rid: RequestId,
    /// Held for the life of the producer (bounds the number of subscribers).
    pub(crate) permit: OwnedSemaphorePermit,
}

/// Starts the producer of `sub` and returns the stream its subscriber reads.
pub(crate) fn start(sub: Subscription) -> WatchStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    let cut = Arc::new(AtomicBool::new(false));
    let stream = WatchStream {
        rx,
        cut: cut.clone(),
        next: sub.from,
        rid: sub.rid.clone(),
        done: false,
    };
    tokio::spawn(produce(sub, tx, cut));
    stream
}

async fn produce(
    sub: Subscription,
    tx: mpsc::Sender<Result<pb::AuditEntry, Status>>,
    cut: Arc<AtomicBool>,
) {
    let _permit = sub.permit;
    let mut published = sub.log.published();
    let mut next = sub.from;
    loop {
        let size = *published.borrow_and_update();
        if next < size {
            let log = sub.log.clone();
            let read = tokio::task::spawn_blocking(move || log.read_published(next, BATCH)).await;
            let records = match read {
                Ok(Ok(records)) if !records.is_empty() => records,
                Ok(Ok(_)) => Vec::new(),
                Ok(Err(e)) => {
                    tracing::error!(request_id = %sub.rid, error = %e, index = next,
                        "audit watch: published records unreadable");
                    let _ = tx.send(Err(audit_error(&e, &sub.rid))).await;
                    return;
                }
                Err(e) => {
                    tracing::error!(request_id = %sub.rid, error = %e, "audit watch: read task failed");
                    return;
                }
            };
            if records.is_empty() {
                // The size moved but the records are not readable yet: wait for the next size.
                if published.changed().await.is_err() {
                    return;
                }
                continue;
            }
            for record in records {
                let entry = pb::AuditEntry {
                    index: next,
                    leaf_hash: leaf_hash(&record).to_vec(),
                    record_json: record,
                };
                match tokio::time::timeout(STALL, tx.send(Ok(entry))).await {
                    Ok(Ok(())) => next += 1,
                    // The subscriber went away.
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::warn!(request_id = %sub.rid, index = next,
                            "audit watch: subscriber too slow, cut");
                        cut.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
            continue;
        }
        if !sub.follow {
            return;
        }
        tokio::select! {
            changed = published.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

/// What a subscriber reads: the producer's entries, or the cut.
pub(crate) struct WatchStream {
    rx: mpsc::Receiver<Result<pb::AuditEntry, Status>>,
    cut: Arc<AtomicBool>,
    /// The first index not yet handed to the subscriber.
    next: u64,
    rid: RequestId,
    done: bool,
}

impl tokio_stream::Stream for WatchStream {
    type Item = Result<pb::AuditEntry, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        // The cut wins over buffered entries, so the resume index is exact.
        if self.cut.load(Ordering::SeqCst) {
            self.done = true;
            let msg = format!(
                "audit watch: consumer too slow; resume with from_index={}",
                self.next
            );
            return Poll::Ready(Some(Err(self.rid.status(Code::ResourceExhausted, msg))));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(entry))) => {
                self.next = entry.index + 1;
                Poll::Ready(Some(Ok(entry)))
            }
            Poll::Ready(Some(Err(status))) => {
                self.done = true;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => {
                // The producer ended: the cut may have been set just before.
                self.done = true;
                if self.cut.load(Ordering::SeqCst) {
                    let msg = format!(
                        "audit watch: consumer too slow; resume with from_index={}",
                        self.next
                    );
                    return Poll::Ready(Some(Err(self.rid.status(Code::ResourceExhausted, msg))));
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use tokio_stream::StreamExt as _;

    use super::*;
    use crate::audit::{AuditRecord, FileAuditLog, Op};

    async fn log_with(n: u64) -> (tempfile::TempDir, Arc<dyn AuditLog>) {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn AuditLog> = Arc::new(FileAuditLog::open(dir.path(), |_| {}).unwrap());
        for i in 0..n {
            let r = AuditRecord::new(Op::GenerateDataKey, format!("req-{i}"), "t".into());
            log.append(r).await.unwrap();
        }
        log.published().wait_for(|s| *s >= n).await.unwrap();
        (dir, log)
    }

    fn subscribe(log: &Arc<dyn AuditLog>, from: u64, follow: bool) -> WatchStream {
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        start(Subscription {
            log: log.clone(),
            from,
            follow,
            rid: RequestId("rid".into()),
            permit,
        })
    }

    fn request_id(entry: &pb::AuditEntry) -> String {
        let v: serde_json::Value = serde_json::from_slice(&entry.record_json).unwrap();
        v["request_id"].as_str().unwrap().to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_sends_from_the_index_then_follows_new_records() {
        let (_dir, log) = log_with(300).await;
        let all: Vec<_> = subscribe(&log, 0, false).collect().await;
        assert_eq!(all.len(), 300);
        for (i, e) in all.iter().enumerate() {
            let e = e.as_ref().unwrap();
            assert_eq!(e.index, i as u64);
            assert_eq!(e.leaf_hash, leaf_hash(&e.record_json).to_vec());
            assert_eq!(request_id(e), format!("req-{i}"));
        }
        let mut live = subscribe(&log, 298, true);
        assert_eq!(live.next().await.unwrap().unwrap().index, 298);
        assert_eq!(live.next().await.unwrap().unwrap().index, 299);
        let r = AuditRecord::new(Op::Decrypt, "req-live".into(), "t".into());
        assert_eq!(log.append(r).await.unwrap(), 300);
        let e = live.next().await.unwrap().unwrap();
        assert_eq!((e.index, request_id(&e)), (300, "req-live".to_owned()));
        // Past the end without follow: an empty stream.
        assert!(subscribe(&log, 1000, false).next().await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_that_never_reads_does_not_hold_back_appends() {
        let (_dir, log) = log_with(10).await;
        let _stuck = subscribe(&log, 0, true);
        let appends = async {
            for i in 0..(BUFFER as u64 * 20) {
                let r = AuditRecord::new(Op::Encrypt, format!("more-{i}"), "t".into());
                log.append(r).await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(20), appends)
            .await
            .expect("appends finish while a subscriber is stuck");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_subscriber_is_cut_with_the_index_to_resume_from() {
        let (_dir, log) = log_with(BUFFER as u64 * 3).await;
        let mut slow = subscribe(&log, 5, true);
        for want in 5..15 {
            assert_eq!(slow.next().await.unwrap().unwrap().index, want);
        }
        // The subscriber stops reading; the producer's buffer fills, then the stall expires.
        for _ in 0..20 {
            if slow.cut.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(STALL).await;
        }
        let err = slow.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(
            err.message().ends_with("resume with from_index=15"),
            "{}",
            err.message()
        );
        assert!(slow.next().await.is_none());
    }
}
