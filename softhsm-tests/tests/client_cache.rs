//! The client's lease-aware data-key cache against a real broker: an expired lease makes the
//! next use ask the broker again (seen in the audit log), and after `RevokeLeases` for the
//! job the cache and the `keybroker` CLI fail with `PERMISSION_DENIED` instead of using a key
//! past its lease. The cache runs on a manual clock; nothing sleeps.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keybroker_client::cache::Clock;
use keybroker_client::{
    Client, ClientConfig, ClientError, DataKeyCache, KeyPurpose, RevokeTarget, dev_token, file,
};
use softhsm_tests::broker::TestBroker;
use time::OffsetDateTime;
use tonic::Code;

#[derive(Debug)]
struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(OffsetDateTime::now_utc())))
    }
    fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
}

fn ctx() -> BTreeMap<String, String> {
    BTreeMap::from([("dataset".to_owned(), "shards".to_owned())])
}

/// Audit records of `op` on `key` with outcome `code`.
fn audited(b: &TestBroker, op: &str, key: &str, code: &str) -> usize {
    b.audit_records()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap())
        .filter(|v| v["op"] == op && v["key_name"] == key && v["outcome"]["code"] == code)
        .count()
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Err(e) => e.code().unwrap_or(Code::Unknown),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// Writes a token with a `job` claim next to the broker's files; returns its path.
fn job_token(b: &TestBroker, job: &str) -> PathBuf {
    let path = b.dir.path().join(format!("token-{job}"));
    let t = dev_token::mint_for_job(b.dir.path(), Duration::from_secs(600), Some(job)).unwrap();
    dev_token::write_token_file(&path, &t).unwrap();
    path
}

async fn client_with(b: &TestBroker, token: &Path) -> Client {
    Client::connect(ClientConfig {
        ca: Some(b.ca()),
        token_file: Some(token.to_path_buf()),
        ..ClientConfig::new(b.endpoint.clone())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn expired_lease_forces_a_new_key_request_and_fresh_keys_are_not_refetched() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key("cache/ttl", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    let clock = ManualClock::new();
    let cache = DataKeyCache::with_clock(c, Some(Duration::from_secs(4)), clock.clone());

    let (h1, k1) = cache.new_file("cache/ttl", &ctx(), 4096).await.unwrap();
    let (h2, k2) = cache.new_file("cache/ttl", &ctx(), 4096).await.unwrap();
    // One data key for both files, but each file has its own salt (so its own AES key).
    assert_eq!(k1.lease_id(), k2.lease_id());
    assert_ne!(h1.salt, h2.salt);
    assert_eq!(cache.fetches(), 1);
    assert_eq!(audited(&b, "generate_data_key", "cache/ttl", "ok"), 1);

    // The broker granted the short lease asked for.
    let granted = k1.expires_at() - clock.now();
    assert!(granted <= time::Duration::seconds(4), "{granted}");

    // Reading: one Decrypt per wrapped key per lease.
    cache.file_key(&h1).await.unwrap();
    cache.file_key(&h2).await.unwrap();
    assert_eq!(audited(&b, "decrypt", "cache/ttl", "ok"), 1);

    clock.advance(Duration::from_secs(4));
    assert_eq!(cache.purge_expired(), 2);
    let (_, k3) = cache.new_file("cache/ttl", &ctx(), 4096).await.unwrap();
    assert_ne!(k3.lease_id(), k1.lease_id());
    assert_ne!(k3.plaintext(), k1.plaintext());
    assert_eq!(cache.fetches(), 3, "generate, decrypt, generate");
    assert_eq!(audited(&b, "generate_data_key", "cache/ttl", "ok"), 2);

    // The opened key expired with the rest: a new Decrypt.
    let reopened = cache.file_key(&h1).await.unwrap();
    assert_eq!(reopened.plaintext(), k1.plaintext());
    assert_eq!(audited(&b, "decrypt", "cache/ttl", "ok"), 2);
    assert_eq!(cache.fetches(), 4);
    b.stop().await.unwrap();
}

#[tokio::test]
async fn revoked_job_fails_loudly_instead_of_using_a_cached_key_past_its_lease() {
    let b = TestBroker::start_with(|cfg| {
        cfg.identity.jwt_issuers[0].job_claim = Some("job".into());
    })
    .await
    .unwrap();
    let admin = b.client().await.unwrap();
    admin
        .create_key("cache/job", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    let token = job_token(&b, "train-42");
    let clock = ManualClock::new();
    let cache = DataKeyCache::with_clock(
        client_with(&b, &token).await,
        Some(Duration::from_secs(60)),
        clock.clone(),
    );
    let (header, key) = cache.new_file("cache/job", &ctx(), 4096).await.unwrap();
    let mut encrypted = Vec::new();
    file::encrypt_stream(
        &mut &b"shard"[..],
        &mut encrypted,
        &header,
        key.plaintext(),
        &mut |_| {},
    )
    .unwrap();
    // The CLI writes a file with the job's token before the teardown.
    let plain = b.dir.path().join("shard.bin");
    let sealed = b.dir.path().join("shard.kbef");
    std::fs::write(&plain, b"shard").unwrap();
    let enc = cli(
        &b,
        &token,
        &["encrypt", path(&plain), path(&sealed), "-k", "cache/job"],
    )
    .await;
    assert!(
        enc.status.success(),
        "{}",
        String::from_utf8_lossy(&enc.stderr)
    );

    let rev = admin
        .revoke_leases(&RevokeTarget::Job("train-42".into()))
        .await
        .unwrap();
    assert_eq!(rev.leases_revoked, 2, "the cache's lease and the CLI's");

    // Within the first three quarters of its lease the cached key is used without asking the
    // broker (the documented window); at the refresh point the broker's refusal wins.
    assert_eq!(
        cache
            .new_file("cache/job", &ctx(), 4096)
            .await
            .unwrap()
            .1
            .lease_id(),
        key.lease_id()
    );
    clock.advance(Duration::from_secs(45));
    let denied = code(cache.new_file("cache/job", &ctx(), 4096).await);
    assert_eq!(denied, Code::PermissionDenied);
    assert!(cache.is_empty(), "a refused key must be dropped, not kept");
    assert_eq!(
        code(cache.new_file("cache/job", &ctx(), 4096).await),
        Code::PermissionDenied
    );
    assert_eq!(code(cache.file_key(&header).await), Code::PermissionDenied);

    // The CLI: no plaintext file, a non-zero exit naming the code.
    let out = b.dir.path().join("shard.out");
    let dec = cli(&b, &token, &["decrypt", path(&sealed), path(&out)]).await;
    let stderr = String::from_utf8_lossy(&dec.stderr);
    assert!(!dec.status.success());
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    assert!(!out.exists());
    // Other principals are untouched.
    admin
        .decrypt(&header.wrapped_key, &ctx(), None)
        .await
        .unwrap();
    assert!(audited(&b, "generate_data_key", "cache/job", "permission_denied") >= 2);
    b.stop().await.unwrap();
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn cli(b: &TestBroker, token: &Path, args: &[&str]) -> std::process::Output {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("keybroker");
    assert!(
        bin.exists(),
        "{} not built (cargo build --workspace --bins)",
        bin.display()
    );
    tokio::process::Command::new(bin)
        .args(args)
        .env("KEYBROKER_ENDPOINT", &b.endpoint)
        .env("KEYBROKER_CA", b.ca())
        .env("KEYBROKER_TOKEN_FILE", token)
        .env_remove("KEYBROKER_CERT")
        .env_remove("KEYBROKER_KEY")
        .output()
        .await
        .unwrap()
}
