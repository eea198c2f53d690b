//! The audit log checked by tools we did not write: Cloudflare's `signed_note` (C2SP
//! signed-note) and `tlog_tiles` (a port of Go's sumdb/tlog: tile authentication, RFC 6962
//! inclusion and consistency proofs) accept the checkpoints, tiles and proofs of a real broker,
//! and reject a flipped tile byte, a changed record, a truncated log and a checkpoint signed by
//! another key. Our own `keybroker audit verify` must agree on every case.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keybroker_client::audit::note::VerifierKey;
use keybroker_client::audit::tiles::{
    VerifyError, bundle_path, parse_bundle, tile_path, verify_dir,
};
use keybroker_client::{Client, ClientError, KeyPurpose};
use softhsm_tests::broker::TestBroker;
use tlog_tiles::{HashReader as _, Tile, TileHashReader, TileReader};
use tonic::Code;

/// Reads hash tiles of a C2SP tlog-tiles directory for `tlog_tiles` (its own path scheme is
/// Go sumdb's `tile/8/L/N`; C2SP drops the height). A missing partial tile falls back to the
/// full one, as C2SP allows.
struct DirTiles(PathBuf);

impl TileReader for DirTiles {
    fn height(&self) -> u8 {
        8
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|t| {
                let (level, n, w) = (t.level(), t.level_index(), u64::from(t.width()));
                let read =
                    |width| std::fs::read(self.0.join(tile_path(u32::from(level), n, width)));
                let data = read(w).or_else(|_| read(256)).map_err(|e| {
                    tlog_tiles::Error::InvalidInput(format!("tile {level}/{n}.p/{w}: {e}"))
                })?;
                let len = usize::try_from(w).unwrap() * 32;
                data.get(..len)
                    .map(<[u8]>::to_vec)
                    .ok_or(tlog_tiles::Error::InvalidTile)
            })
            .collect()
    }

    fn save_tiles(&self, _tiles: &[Tile], _data: &[Vec<u8>]) {}
}

/// The independent verifier: the checkpoint's signature (`signed_note`), its body
/// (`tlog_tiles::Checkpoint`), every tile authenticated against the signed root
/// (`TileHashReader`) and every record's hash against the authenticated leaf hashes.
fn independent_verify(dir: &Path, vkey: &str) -> Result<tlog_tiles::Checkpoint, String> {
    let note_bytes = std::fs::read(dir.join("checkpoint")).map_err(|e| e.to_string())?;
    let verifier = signed_note::StandardVerifier::new(vkey).map_err(|e| format!("{e:?}"))?;
    let note = signed_note::Note::from_bytes(&note_bytes).map_err(|e| format!("{e:?}"))?;
    note.verify(&signed_note::VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| format!("signature: {e:?}"))?;
    let cp = tlog_tiles::Checkpoint::from_bytes(note.text()).map_err(|e| format!("{e:?}"))?;
    let tiles = DirTiles(dir.to_path_buf());
    let reader = TileHashReader::new(cp.size(), *cp.hash(), &tiles);
    let root = tlog_tiles::tree_hash(cp.size(), &reader).map_err(|e| format!("root: {e:?}"))?;
    if root != *cp.hash() {
        return Err("tree hash differs from the checkpoint".into());
    }
    for n in 0..cp.size().div_ceil(256) {
        let width = (cp.size() - n * 256).min(256);
        let bundle = std::fs::read(dir.join(bundle_path(n, width))).map_err(|e| e.to_string())?;
        let records = parse_bundle(&bundle).ok_or("bundle cut short")?;
        if records.len() as u64 != width {
            return Err(format!("bundle {n} holds {} records", records.len()));
        }
        let indexes: Vec<u64> = (0..width)
            .map(|i| tlog_tiles::stored_hash_index(0, n * 256 + i))
            .collect();
        let leaves = reader
            .read_hashes(&indexes)
            .map_err(|e| format!("tiles: {e:?}"))?;
        for (i, (record, leaf)) in records.iter().zip(leaves).enumerate() {
            if tlog_tiles::record_hash(record) != leaf {
                return Err(format!(
                    "record {} does not match its tile",
                    n * 256 + i as u64
                ));
            }
        }
    }
    Ok(cp)
}

async fn checkpoint_at_least(c: &Client, size: u64) -> (tlog_tiles::Checkpoint, String, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.audit_checkpoint().await {
            Ok(cp) => {
                let parsed = signed_note::Note::from_bytes(cp.note.as_bytes()).unwrap();
                let body = tlog_tiles::Checkpoint::from_bytes(parsed.text()).unwrap();
                if body.size() >= size {
                    return (body, cp.note, cp.vkey);
                }
            }
            Err(e) if e.code() == Some(Code::Unavailable) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "no checkpoint of {size} records");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn generate(c: &Client, key: &str, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let c = c.clone();
        let key = key.to_owned();
        tasks.spawn(async move {
            let none = BTreeMap::new();
            for _ in (t..n).step_by(8) {
                c.generate_data_key(&key, &none, None).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} not built (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// `keybroker audit verify DIR --vkey FILE`: exit success and stderr.
fn cli_verify(dir: &Path, vkey_file: &Path) -> (bool, String) {
    let out = std::process::Command::new(bin("keybroker"))
        .args(["audit", "verify"])
        .arg(dir)
        .arg("--vkey")
        .arg(vkey_file)
        .env_remove("KEYBROKER_ENDPOINT")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn independent_tools_accept_our_checkpoints_tiles_and_proofs() {
    let mut b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_key("datasets/tlog", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    generate(&c, "datasets/tlog", 99).await;
    let (old, old_note, vkey) = checkpoint_at_least(&c, 100).await;
    // 600 records: two full tiles, a partial one, and a level-1 tile.
    generate(&c, "datasets/tlog", 500).await;
    let (cp, note, vkey_now) = checkpoint_at_least(&c, 600).await;
    assert_eq!(vkey, vkey_now);
    let published = std::fs::read_to_string(b.config.audit.dir.join("checkpoint.vkey")).unwrap();
    assert_eq!(
        published.trim(),
        vkey,
        "the broker serves the published verifier key"
    );
    for n in [&old_note, &note] {
        let parsed = signed_note::Note::from_bytes(n.as_bytes()).unwrap();
        let verifier = signed_note::StandardVerifier::new(&vkey).unwrap();
        parsed
            .verify(&signed_note::VerifierList::new(vec![Box::new(verifier)]))
            .unwrap();
    }

    // Watch returns exactly the records of the log, which prove into the signed tree.
    let mut stream = c.watch_audit(0, false).await.unwrap();
    let mut records = Vec::new();
    while let Some(e) = stream.next().await.unwrap() {
        records.push(e.record);
    }
    let (size, root) = (cp.size(), *cp.hash());
    assert_eq!(records.len() as u64, size);
    for index in [0, 1, 99, 255, 256, 300, 511, 512, size - 1] {
        let proof: Vec<_> = c
            .audit_inclusion_proof(index, size)
            .await
            .unwrap()
            .into_iter()
            .map(tlog_tiles::Hash)
            .collect();
        let leaf = tlog_tiles::record_hash(&records[usize::try_from(index).unwrap()]);
        tlog_tiles::check_record(&proof, size, root, index, leaf)
            .unwrap_or_else(|e| panic!("inclusion of {index}: {e:?}"));
        let wrong = tlog_tiles::record_hash(b"{}");
        assert!(tlog_tiles::check_record(&proof, size, root, index, wrong).is_err());
    }
    let proof: Vec<_> = c
        .audit_consistency_proof(old.size(), size)
        .await
        .unwrap()
        .into_iter()
        .map(tlog_tiles::Hash)
        .collect();
    tlog_tiles::check_tree(&proof, size, root, old.size(), *old.hash())
        .expect("the old checkpoint's tree is a prefix of the new one");
    let fake_old = tlog_tiles::record_hash(b"rewritten history");
    assert!(tlog_tiles::check_tree(&proof, size, root, old.size(), fake_old).is_err());

    // Out-of-range requests are refused, not answered with something unverifiable.
    for r in [
        c.audit_inclusion_proof(size, size).await,
        c.audit_inclusion_proof(0, size + 10_000).await,
        c.audit_consistency_proof(0, size).await,
        c.audit_consistency_proof(size, size - 1).await,
    ] {
        assert_eq!(r.unwrap_err().code(), Some(Code::InvalidArgument));
    }

    // At rest, after the final checkpoint: both verifiers accept the directory.
    drop(stream);
    drop(c);
    b.stop_ref().await.unwrap();
    let dir = b.config.audit.dir.clone();
    let cp = independent_verify(&dir, &vkey).unwrap();
    assert_eq!(cp.size(), 600);
    let ours = VerifierKey::parse(&vkey).unwrap();
    assert_eq!(verify_dir(&dir, &ours).unwrap().checkpoint.size, 600);
    let vkey_file = b.dir.path().join("audit.vkey");
    std::fs::write(&vkey_file, format!("{vkey}\n")).unwrap();
    assert_eq!(cli_verify(&dir, &vkey_file), (true, String::new()));
    hostile_cases(&dir, &vkey, &vkey_file, b.dir.path());
}

/// Each tampering, on its own copy of the log: both verifiers must refuse it, ours naming
/// the first bad record or file.
fn hostile_cases(dir: &Path, vkey: &str, vkey_file: &Path, scratch: &Path) {
    type Mutate = fn(&Path);
    let cases: [(&str, Mutate, &str); 5] = [
        (
            "flipped byte in a tile",
            |d| flip(&d.join(tile_path(0, 1, 256)), 40 * 32 + 5),
            "record 296 ",
        ),
        (
            "changed record",
            |d| {
                let path = d.join(bundle_path(0, 256));
                let mut bytes = std::fs::read(&path).unwrap();
                // Same length, other content: a different request id in record 0.
                let at = find(&bytes, b"\"request_id\":\"") + 15;
                bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
                std::fs::write(&path, bytes).unwrap();
            },
            "record 0 ",
        ),
        (
            "truncated log (last record gone)",
            |d| {
                let path = d.join(bundle_path(2, 88));
                let bytes = std::fs::read(&path).unwrap();
                let records = parse_bundle(&bytes).unwrap();
                let keep = bytes.len() - 2 - records.last().unwrap().len();
                std::fs::write(&path, &bytes[..keep]).unwrap();
            },
            "record 599 ",
        ),
        (
            "truncated log (a tile gone)",
            |d| std::fs::remove_file(d.join(tile_path(1, 0, 2))).unwrap(),
            "tile/1/000.p/2",
        ),
        (
            "checkpoint signed by another key",
            resign_with_another_key,
            "not signed by",
        ),
    ];
    for (i, (name, mutate, expect)) in cases.into_iter().enumerate() {
        let copy = scratch.join(format!("hostile-{i}"));
        copy_dir(dir, &copy);
        assert!(
            independent_verify(&copy, vkey).is_ok(),
            "{name}: copy verifies"
        );
        mutate(&copy);
        let theirs = independent_verify(&copy, vkey);
        assert!(
            theirs.is_err(),
            "{name}: the independent verifier accepted it"
        );
        let ours = verify_dir(&copy, &VerifierKey::parse(vkey).unwrap()).unwrap_err();
        assert!(ours.to_string().contains(expect), "{name}: {ours}");
        let (ok, stderr) = cli_verify(&copy, vkey_file);
        assert!(!ok && stderr.contains(expect), "{name}: CLI said {stderr}");
        if name == "changed record" {
            assert!(matches!(ours, VerifyError::Record { index: 0, .. }));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).position(|w| w == needle).unwrap()
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Re-signs the checkpoint body with a fresh Ed25519 key under the same name.
fn resign_with_another_key(d: &Path) {
    use keybroker_broker::audit::checkpoint::{key_id, note};
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    let text = std::fs::read_to_string(d.join("checkpoint")).unwrap();
    let (body, _) = text.rsplit_once("\n\n").unwrap();
    let body = format!("{body}\n");
    let name = body.lines().next().unwrap().to_owned();
    let kp = Ed25519KeyPair::from_seed_unchecked(&[42; 32]).unwrap();
    let public: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
    let sig: [u8; 64] = kp.sign(body.as_bytes()).as_ref().try_into().unwrap();
    std::fs::write(
        d.join("checkpoint"),
        note(&body, &name, key_id(&name, &public), &sig),
    )
    .unwrap();
}

#[tokio::test]
async fn audit_reads_need_a_policy_permit_and_watch_follows_live_records() {
    // The dev namespace may use keys but has no audit permit here.
    const NO_AUDIT: &str = r#"
@id("dev-keys-only")
permit (principal, action in [Keybroker::Action::"CreateKey", Keybroker::Action::"GenerateDataKey"], resource)
when { principal.namespace == "dev" };
"#;
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    let none = BTreeMap::new();
    c.create_key("datasets/watch", KeyPurpose::DataKey, &none, None)
        .await
        .unwrap();
    let mut live = c.watch_audit(0, true).await.unwrap();
    assert_eq!(live.next().await.unwrap().unwrap().index, 0);
    let dk = c
        .generate_data_key("datasets/watch", &none, None)
        .await
        .unwrap();
    let e = live.next().await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&e.record).unwrap();
    assert_eq!(
        (e.index, v["lease_id"].as_str()),
        (1, Some(dk.lease_id.as_str()))
    );
    assert_eq!(v["hsm_id"], "softhsm-test");
    assert_eq!(v["hsm_jurisdiction"], "EU");
    assert_eq!(v["reasons"][0], "policy:dev-namespace-may-do-anything");
    drop(live);

    // The CLI: vkey, tail and prove against the running broker.
    checkpoint_at_least(&c, 2).await;
    let token = b.token_file().unwrap();
    let cli = async |args: &[&str]| {
        let out = tokio::process::Command::new(bin("keybroker"))
            .args(args)
            .env("KEYBROKER_ENDPOINT", &b.endpoint)
            .env("KEYBROKER_CA", b.ca())
            .env("KEYBROKER_TOKEN_FILE", &token)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "keybroker {args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    };
    let vkey = cli(&["audit", "vkey", "--output", "text"]).await;
    let published = std::fs::read_to_string(b.config.audit.dir.join("checkpoint.vkey")).unwrap();
    assert_eq!(vkey, published);
    let tail = cli(&["audit", "tail", "--from", "0"]).await;
    let lines: Vec<serde_json::Value> = tail
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["lease_id"].as_str(), Some(dk.lease_id.as_str()));
    let vkey_file = b.dir.path().join("pinned.vkey");
    std::fs::write(&vkey_file, &vkey).unwrap();
    let vkey_arg = vkey_file.to_str().unwrap();
    let proved: serde_json::Value =
        serde_json::from_str(&cli(&["audit", "prove", "--index", "1", "--vkey", vkey_arg]).await)
            .unwrap();
    assert_eq!(proved["verified"], true);
    assert_eq!(
        proved["record"]["lease_id"].as_str(),
        Some(dk.lease_id.as_str())
    );

    std::fs::write(b.dir.path().join("dev-policy.cedar"), NO_AUDIT).unwrap();
    let b = b
        .restart_with_residency("allowed_jurisdictions = [\"EU\"]")
        .await
        .unwrap();
    let c = b.client().await.unwrap();
    let denied = |r: Result<(), ClientError>| match r {
        Err(ClientError::Status { code, .. }) => code,
        Err(e) => panic!("{e}"),
        Ok(()) => Code::Ok,
    };
    assert_eq!(
        denied(c.watch_audit(0, false).await.map(|_| ())),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(c.audit_checkpoint().await.map(|_| ())),
        Code::PermissionDenied
    );
    assert_eq!(
        denied(c.audit_inclusion_proof(0, 1).await.map(|_| ())),
        Code::PermissionDenied
    );
    c.generate_data_key("datasets/watch", &none, None)
        .await
        .unwrap();
    b.stop().await.unwrap();
}

/// `keybroker audit verify DIR --vkey FILE --old-checkpoint …`: success, stdout, stderr.
fn cli_verify_old(dir: &Path, vkey_file: &Path, old: &[&Path]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(bin("keybroker"));
    cmd.args(["audit", "verify"])
        .arg(dir)
        .arg("--vkey")
        .arg(vkey_file)
        .env_remove("KEYBROKER_ENDPOINT");
    for o in old {
        cmd.arg("--old-checkpoint").arg(o);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_old_checkpoint_put_back_is_caught_offline_by_a_checkpoint_kept_from_later() {
    let mut b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key(
        "datasets/rollback",
        KeyPurpose::DataKey,
        &BTreeMap::new(),
        None,
    )
    .await
    .unwrap();
    generate(&c, "datasets/rollback", 40).await;
    let (early, early_note, vkey) = checkpoint_at_least(&c, 41).await;
    // Past a tile boundary, so the rollback leaves whole bundles beyond the old checkpoint.
    generate(&c, "datasets/rollback", 300).await;
    let (late, late_note, _) = checkpoint_at_least(&c, 341).await;
    drop(c);
    b.stop_ref().await.unwrap();
    let scratch = b.dir.path();
    let vkey_file = scratch.join("audit.vkey");
    std::fs::write(&vkey_file, format!("{vkey}\n")).unwrap();
    let (early_file, late_file) = (
        scratch.join("early.checkpoint"),
        scratch.join("late.checkpoint"),
    );
    std::fs::write(&early_file, &early_note).unwrap();
    std::fs::write(&late_file, &late_note).unwrap();
    let dir = b.config.audit.dir.clone();

    // The live directory only grew since both kept checkpoints.
    let (ok, stdout, stderr) = cli_verify_old(&dir, &vkey_file, &[&early_file, &late_file]);
    assert!(ok, "{stderr}");
    let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        out["old_checkpoint_sizes"],
        serde_json::json!([early.size(), late.size()]),
        "{stdout}"
    );
    assert_eq!(out["entries_beyond_checkpoint"], false);
    assert!(!stderr.contains("warning"), "{stderr}");

    // Rolled back: the early checkpoint put back over the tiles. It verifies on its own (with
    // a warning about the unsigned entries beyond it); the checkpoint kept later catches it.
    let rolled = scratch.join("rolled");
    copy_dir(&dir, &rolled);
    std::fs::write(rolled.join("checkpoint"), &early_note).unwrap();
    let (ok, _, stderr) = cli_verify_old(&rolled, &vkey_file, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("beyond its checkpoint"), "{stderr}");
    let (ok, _, stderr) = cli_verify_old(&rolled, &vkey_file, &[&early_file, &late_file]);
    assert!(!ok, "a rolled-back log verified against a later checkpoint");
    assert!(
        stderr.contains("rolled back") && stderr.contains(&late.size().to_string()),
        "{stderr}"
    );

    // A kept checkpoint that is not a checkpoint of this key is refused, not skipped.
    let forged = scratch.join("forged.checkpoint");
    std::fs::write(
        &forged,
        late_note.replace(&late.size().to_string(), "999999"),
    )
    .unwrap();
    let (ok, _, stderr) = cli_verify_old(&dir, &vkey_file, &[&forged]);
    assert!(!ok && stderr.contains("forged.checkpoint"), "{stderr}");
}
