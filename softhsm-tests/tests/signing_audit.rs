//! A signature is released only once its audit record is durable: with the audit disk full,
//! `Sign` answers UNAVAILABLE, and every signature a client did receive is in the log with the
//! index it was given.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keybroker_client::signing::format::Algorithm;
use serde_json::Value;
use softhsm_tests::broker::TestBroker;
use tonic::Code;

/// A tmpfs of `size` mounted on a fresh dir, unmounted on drop (needs root).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount(8)");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (this test fills a disk)"
        );
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

fn fill(path: &Path) -> PathBuf {
    use std::io::Write as _;
    let filler = path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[0]).is_ok() {}
    filler
}

#[tokio::test]
async fn a_full_audit_disk_refuses_the_signature_and_every_signature_returned_is_logged() {
    let fs = Tmpfs::mount("1m");
    let audit_dir = fs.0.path().join("audit");
    let b = TestBroker::start_with(move |c| c.audit.dir = audit_dir)
        .await
        .unwrap();
    let c = b.client().await.unwrap();
    c.create_signing_key("models/full", Algorithm::EcdsaP256, &BTreeMap::new(), None)
        .await
        .unwrap();
    let mut received = Vec::new();
    for i in 0u8..3 {
        let s = c
            .sign_digest("models/full", &[i; 32], "a", "")
            .await
            .unwrap();
        received.push((s.audit_index, hex::encode([i; 32])));
    }
    let _filler = fill(fs.0.path());
    let mut refused = None;
    for i in 0u32..500 {
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&i.to_be_bytes());
        match c.sign_digest("models/full", &digest, "a", "").await {
            Ok(s) => received.push((s.audit_index, hex::encode(digest))),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the full disk must refuse an append");
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    let records: Vec<Value> = b
        .audit_records()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    assert!(received.len() >= 3);
    for (index, digest) in &received {
        let r = &records[usize::try_from(*index).unwrap()];
        assert_eq!(r["op"], "sign");
        assert_eq!(r["signed"]["digest"], format!("sha256:{digest}"));
    }
}
