//! End-to-end audit: every call leaves one record (granted or refused) with no key material or
//! token in it; a failing audit disk refuses key release; a torn tail is recovered on restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use keybroker_client::KeyPurpose;
use keybroker_proto::v1::GenerateDataKeyRequest;
use keybroker_proto::v1::data_keys_client::DataKeysClient;
use serde_json::Value;
use softhsm_tests::broker::TestBroker;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn parse(records: &[String]) -> Vec<Value> {
    records
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

/// Every way `secret` could appear in a record.
fn encodings(secret: &[u8]) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    vec![
        hex::encode(secret),
        hex::encode_upper(secret),
        b64.encode(secret),
        b64u.encode(secret),
    ]
}

#[tokio::test]
async fn every_operation_is_recorded_allowed_or_denied_without_keys_or_tokens() {
    let mut b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let token = std::fs::read_to_string(b.dir.path().join("token")).unwrap();
    let none = BTreeMap::new();
    let ctx: BTreeMap<String, String> = [("dataset".to_owned(), "imagenet".to_owned())].into();
    let mut secrets: Vec<Vec<u8>> = Vec::new();

    c.create_key("datasets/audit", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    let dk = c
        .generate_data_key("datasets/audit", &ctx, None)
        .await
        .unwrap();
    secrets.push(dk.plaintext.to_vec());
    secrets.push(dk.ciphertext.clone());
    let opened = c.decrypt(&dk.ciphertext, &ctx, None).await.unwrap();
    assert_eq!(*opened.plaintext, *dk.plaintext);
    let wrapped = c
        .generate_data_key_without_plaintext("datasets/audit", &ctx)
        .await
        .unwrap();
    secrets.push(wrapped.ciphertext.clone());
    c.create_key("secrets/audit", KeyPurpose::Seal, &none, None)
        .await
        .unwrap();
    let sealed = c
        .encrypt("secrets/audit", b"my very secret bytes", &none)
        .await
        .unwrap();
    secrets.push(b"my very secret bytes".to_vec());
    c.re_encrypt(&sealed.ciphertext, &none).await.unwrap();
    c.get_key("datasets/audit").await.unwrap();
    c.list_all_keys("datasets/").await.unwrap();
    c.rotate_key("datasets/audit").await.unwrap();
    let granted = 10;

    // Refusals: unknown key, wrong context, bad input, no token, a forged token.
    let denied: Vec<Code> = vec![
        c.generate_data_key("datasets/nope", &ctx, None)
            .await
            .unwrap_err()
            .code()
            .unwrap(),
        c.decrypt(&dk.ciphertext, &none, None)
            .await
            .unwrap_err()
            .code()
            .unwrap(),
        c.get_key("Bad Name").await.unwrap_err().code().unwrap(),
    ];
    assert_eq!(
        denied,
        [
            Code::PermissionDenied,
            Code::InvalidArgument,
            Code::InvalidArgument
        ]
    );
    let mut raw = DataKeysClient::new(b.channel().await.unwrap());
    let req = || GenerateDataKeyRequest {
        key: "datasets/audit".into(),
        ..Default::default()
    };
    assert_eq!(
        raw.generate_data_key(req()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let forged = format!("{}x", token.trim());
    let mut r = tonic::Request::new(req());
    r.metadata_mut()
        .insert("authorization", format!("Bearer {forged}").parse().unwrap());
    assert_eq!(
        raw.generate_data_key(r).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    b.stop_ref().await.unwrap();

    let texts = b.audit_records().unwrap();
    let records = parse(&texts);
    assert_eq!(records.len(), granted + 5, "{texts:#?}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["index"], i as u64, "gapless indices");
        let policy = r["policy_sha256"].as_str().unwrap_or_default();
        assert!(
            policy.len() == 64 && policy.bytes().all(|b| b.is_ascii_hexdigit()),
            "every record names the policy in force: {r}"
        );
        assert_eq!(r["format_version"], 1);
        assert!(!r["request_id"].as_str().unwrap().is_empty(), "{r}");
    }
    let ops: Vec<&str> = records.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops[..granted],
        [
            "create_key",
            "generate_data_key",
            "decrypt",
            "generate_data_key_without_plaintext",
            "create_key",
            "encrypt",
            "re_encrypt",
            "get_key",
            "list_keys",
            "rotate_key"
        ]
    );
    for r in &records[..granted] {
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["outcome"]["code"], "ok", "{r}");
        assert_eq!(r["principal"]["issuer"], keybroker_broker::dev::DEV_ISSUER);
    }
    let gdk = &records[1];
    assert_eq!(gdk["key_name"], "datasets/audit");
    assert_eq!(gdk["key_version"], 1);
    assert_eq!(gdk["encryption_context"]["dataset"], "imagenet");
    assert_eq!(gdk["lease_id"], dk.lease_id.as_str());
    assert_eq!(records[0]["hsm_id"], "softhsm-test");
    assert_eq!(records[0]["hsm_jurisdiction"], "EU");
    assert_eq!(
        records[2]["key_name"], "datasets/audit",
        "decrypt names the key"
    );

    let refused = &records[granted..];
    let codes: Vec<&str> = refused
        .iter()
        .map(|r| r["outcome"]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "permission_denied",
            "invalid_argument",
            "invalid_argument",
            "unauthenticated",
            "unauthenticated"
        ]
    );
    for r in refused {
        assert_eq!(r["decision"], "deny", "{r}");
        assert!(!r["reasons"][0].as_str().unwrap().is_empty(), "{r}");
    }
    assert!(refused[3]["principal"].is_null());
    verify_checkpoint(&b.config.audit.dir, &texts);
    assert_eq!(refused[0]["key_name"], "datasets/nope");

    // No record holds key material, ciphertext or a token, in any usual encoding.
    let all = texts.concat();
    for secret in &secrets {
        for enc in encodings(secret) {
            assert!(!all.contains(&enc), "secret found in the audit log");
        }
    }
    for t in [token.trim(), forged.as_str()] {
        assert!(!all.contains(t), "token found in the audit log");
        let signature = t.rsplit('.').next().unwrap();
        assert!(
            !all.contains(signature),
            "token signature found in the audit log"
        );
    }
}

/// RFC 6962 MTH, written here from the RFC with ring's SHA-256 (independent of the broker's).
fn mth(leaves: &[&[u8]]) -> Vec<u8> {
    use ring::digest::{SHA256, digest};
    let cat = |parts: &[&[u8]]| digest(&SHA256, &parts.concat()).as_ref().to_vec();
    match leaves.len() {
        0 => cat(&[]),
        1 => cat(&[&[0], leaves[0]]),
        n => {
            let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
            cat(&[&[1], &mth(&leaves[..k]), &mth(&leaves[k..])])
        }
    }
}

/// Checks `<dir>/checkpoint` against `<dir>/checkpoint.vkey` and the records: a C2SP signed
/// note over `origin\nsize\nroot\n`, Ed25519 (ring), key id, size and root.
fn verify_checkpoint(dir: &Path, records: &[String]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let vkey = std::fs::read_to_string(dir.join("checkpoint.vkey")).unwrap();
    let [name, id, key]: [&str; 3] = vkey
        .trim()
        .splitn(3, '+')
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let key = b64.decode(key).unwrap();
    assert_eq!(key[0], 0x01, "Ed25519 vkey");
    let text = std::fs::read_to_string(dir.join("checkpoint")).unwrap();
    let (body, sigs) = text.split_once("\n\n").unwrap();
    let body = format!("{body}\n");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], name);
    assert_eq!(lines[1], records.len().to_string());
    let leaves: Vec<&[u8]> = records.iter().map(String::as_bytes).collect();
    assert_eq!(b64.decode(lines[2]).unwrap(), mth(&leaves), "root");
    let sig_line = sigs.lines().next().unwrap();
    let rest = sig_line.strip_prefix("\u{2014} ").unwrap();
    let (signer, sig) = rest.split_once(' ').unwrap();
    assert_eq!(signer, name);
    let sig = b64.decode(sig).unwrap();
    assert_eq!(hex::encode(&sig[..4]), id);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key[1..])
        .verify(body.as_bytes(), &sig[4..])
        .expect("checkpoint signature verifies");
}

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
    fn path(&self) -> &Path {
        self.0.path()
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
async fn a_full_audit_disk_refuses_key_release_goes_not_serving_at_once_and_recovers_on_restart() {
    let fs = Tmpfs::mount("1m");
    let audit_dir = fs.path().join("audit");
    let dir_for_config = audit_dir.clone();
    let b = TestBroker::start_with(move |c| c.audit.dir = dir_for_config)
        .await
        .unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_key("datasets/full", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    let mut health = HealthClient::new(b.channel().await.unwrap());
    let status = async |h: &mut HealthClient<_>| {
        let r = h
            .check(HealthCheckRequest {
                service: "keybroker.v1.DataKeys".into(),
            })
            .await
            .unwrap()
            .into_inner();
        ServingStatus::try_from(r.status).unwrap()
    };
    // The monitor's first probe runs at once: poll (bounded) until it has reported.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(&mut health).await != ServingStatus::Serving {
        assert!(
            std::time::Instant::now() < deadline,
            "never SERVING before the disk filled"
        );
        tokio::task::yield_now().await;
    }

    let filler = fill(fs.path());
    let mut released = 0;
    let mut refused = None;
    for _ in 0..500 {
        match c.generate_data_key("datasets/full", &none, None).await {
            Ok(dk) => {
                assert_eq!(dk.plaintext.len(), 32);
                released += 1;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("the full disk must refuse an append");
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(err.to_string().contains("audit log unavailable"), "{err}");
    // Health flipped in the event that poisoned the log, before this refusal was answered:
    // no polling, no probe interval.
    assert_eq!(
        status(&mut health).await,
        ServingStatus::NotServing,
        "health still SERVING after the audit log refused a call"
    );

    // Poisoned until restart: freeing space does not make the log trusted again.
    std::fs::remove_file(&filler).unwrap();
    let again = c.generate_data_key("datasets/full", &none, None).await;
    assert_eq!(again.unwrap_err().code(), Some(Code::Unavailable));
    let again = c.get_key("datasets/full").await;
    assert_eq!(again.unwrap_err().code(), Some(Code::Unavailable));
    assert_eq!(status(&mut health).await, ServingStatus::NotServing);

    // Every key the client received is in the log.
    let records = parse(&b.audit_records().unwrap());
    assert_eq!(records.len(), 1 + released, "create_key + released keys");

    // After a restart the (possibly torn) tail is truncated and appends resume, gapless.
    drop(c);
    let b = b.restart().await.unwrap();
    let c = b.client().await.unwrap();
    c.generate_data_key("datasets/full", &none, None)
        .await
        .unwrap();
    let records = parse(&b.audit_records().unwrap());
    assert_eq!(records.len(), 2 + released);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["index"], i as u64);
    }
    b.stop().await.unwrap();
}

#[tokio::test]
async fn restart_truncates_a_torn_tail_and_continues_the_indices() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_key("datasets/torn", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    c.generate_data_key("datasets/torn", &none, None)
        .await
        .unwrap();
    drop(c);
    let mut b = b.restart().await.unwrap();
    b.stop_ref().await.unwrap();
    // A crash mid-write: the start of a frame that never finished.
    let seg = b
        .config
        .audit
        .dir
        .join("log")
        .join(format!("{:020}.seg", 0));
    let intact = std::fs::metadata(&seg).unwrap().len();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0, 0, 1, 0, 0xde, 0xad, 0xbe, 0xef, b'{'])
            .unwrap();
    }
    let mut b = b.restart().await.unwrap();
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        intact,
        "torn tail truncated"
    );
    let c = b.client().await.unwrap();
    c.generate_data_key("datasets/torn", &none, None)
        .await
        .unwrap();
    let records = parse(&b.audit_records().unwrap());
    assert_eq!(records.len(), 3);
    assert_eq!(records[2]["index"], 2);
    assert_eq!(records[2]["op"], "generate_data_key");
    b.stop_ref().await.unwrap();
    verify_checkpoint(&b.config.audit.dir, &b.audit_records().unwrap());
    b.stop().await.unwrap();
}
