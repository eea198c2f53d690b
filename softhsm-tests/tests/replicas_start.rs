//! Replicas started at the same instant on a fresh database and token (issue 22): the log gets
//! exactly one checkpoint key for its whole life. Ten rounds, each: three `keybrokerd`
//! processes spawned together; one Ed25519 pair on the token; one verifier key served by every
//! replica; every replica answers `GetCheckpoint` with the newest checkpoint and its tiles
//! directory verifies; and across two forced takeovers (kill -9 of the publisher) every new
//! checkpoint verifies with the vkey pinned at the start and is consistent with the old one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keybroker_broker::audit::checkpoint::KEY_LABEL;
use keybroker_broker::hsm::HsmPool;
use keybroker_client::audit::note::{Checkpoint, VerifierKey, verify_checkpoint};
use keybroker_client::audit::proof::verify_consistency;
use keybroker_client::audit::tiles::verify_dir;
use keybroker_client::{Client, KeyPurpose};
use softhsm_tests::replicas::{Cluster, Replica};

const KEY: &str = "datasets/start";
const ROUNDS: usize = 10;

fn ctx() -> BTreeMap<String, String> {
    BTreeMap::from([("dataset".to_owned(), "start".to_owned())])
}

/// Waits until `client`'s replica serves a checkpoint of at least `size` records that
/// verifies with `pinned`.
async fn checkpoint_at_least(
    client: &Client,
    pinned: &VerifierKey,
    size: u64,
) -> (String, Checkpoint) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(cp) = client.audit_checkpoint().await {
            let checked = verify_checkpoint(pinned, &cp.note).unwrap_or_else(|e| {
                panic!("served checkpoint does not verify with the pinned vkey: {e}")
            });
            if checked.size >= size {
                return (cp.note, checked);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of {size} records served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publisher(replicas: &[Replica]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(i) = replicas.iter().position(Replica::is_publisher) {
            return i;
        }
        assert!(Instant::now() < deadline, "no replica became the publisher");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn traffic(client: &Client, n: usize) {
    for _ in 0..n {
        client.generate_data_key(KEY, &ctx(), None).await.unwrap();
    }
}

/// The newest checkpoint of every live replica is `cp` (once mirrors catch up), and every
/// replica's tiles directory verifies with the pinned vkey.
async fn every_replica_serves(
    cluster: &Cluster,
    replicas: &[Replica],
    pinned: &VerifierKey,
    size: u64,
) {
    for r in replicas {
        let client = cluster.client(r).await.unwrap();
        let (_, cp) = checkpoint_at_least(&client, pinned, size).await;
        assert!(cp.size >= size);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match verify_dir(&r.audit_dir, pinned) {
                Ok(v) if v.checkpoint.size >= size => break,
                other => assert!(
                    Instant::now() < deadline,
                    "replica {}'s directory does not verify at {size}: {:?}",
                    r.name,
                    other.map(|v| v.checkpoint.size)
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let vkey = std::fs::read_to_string(r.audit_dir.join("checkpoint.vkey")).unwrap();
        let on_disk = VerifierKey::parse(vkey.trim()).unwrap();
        assert_eq!(
            (on_disk.id, on_disk.public),
            (pinned.id, pinned.public),
            "replica {} holds another vkey",
            r.name
        );
    }
}

async fn round(n: usize) {
    let cluster = Cluster::new().unwrap();
    // Spawned together: no replica waits for another.
    let (a, b, c) = tokio::join!(cluster.start("a"), cluster.start("b"), cluster.start("c"));
    let mut replicas = vec![a.unwrap(), b.unwrap(), c.unwrap()];

    // One pair on the token.
    let pool = HsmPool::connect(cluster.token.hsm_settings("check"))
        .await
        .unwrap();
    let pairs = pool.ed25519_pairs(KEY_LABEL).await.unwrap();
    assert_eq!(
        pairs.len(),
        1,
        "round {n}: {} checkpoint key pairs on the token",
        pairs.len()
    );

    // One vkey, the same from every replica; pinned now, as an auditor would.
    let clients: Vec<Client> = {
        let mut v = Vec::new();
        for r in &replicas {
            v.push(cluster.client(r).await.unwrap());
        }
        v
    };
    let mut vkeys = Vec::new();
    for c in &clients {
        let deadline = Instant::now() + Duration::from_secs(30);
        let cp = loop {
            if let Ok(cp) = c.audit_checkpoint().await {
                break cp;
            }
            assert!(Instant::now() < deadline, "round {n}: no checkpoint served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        vkeys.push(cp.vkey);
    }
    assert!(
        vkeys.iter().all(|v| *v == vkeys[0]),
        "round {n}: vkeys differ: {vkeys:?}"
    );
    let pinned = VerifierKey::parse(&vkeys[0]).unwrap();

    // SoftHSM shares one token directory between the three processes: a create that races
    // another process's reading of it may answer UNAVAILABLE (retryable), as documented.
    let mut tries = 0;
    loop {
        match clients[0]
            .create_key(KEY, KeyPurpose::DataKey, &BTreeMap::new(), None)
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => break,
            Err(e) if e.code() == Some(tonic::Code::Unavailable) && tries < 5 => tries += 1,
            Err(e) => panic!("round {n}: create_key: {e}"),
        }
    }
    traffic(&clients[1], 5).await;
    let (_, mut old) = checkpoint_at_least(&clients[2], &pinned, 6).await;
    every_replica_serves(&cluster, &replicas, &pinned, old.size).await;
    drop(clients);

    // Two forced takeovers: each new publisher signs with the same key, consistently.
    for takeover in 0..2 {
        let killed = replicas.remove(publisher(&replicas).await);
        killed.kill().await.unwrap();
        let _ = publisher(&replicas).await;
        let client = cluster.client(&replicas[0]).await.unwrap();
        traffic(&client, 5).await;
        let (_, new) = checkpoint_at_least(&client, &pinned, old.size + 5).await;
        let proof = client
            .audit_consistency_proof(old.size, new.size)
            .await
            .unwrap();
        verify_consistency(old.size, new.size, &old.root, &new.root, &proof)
            .unwrap_or_else(|e| panic!("round {n}, takeover {takeover}: not consistent: {e}"));
        every_replica_serves(&cluster, &replicas, &pinned, new.size).await;
        old = new;
    }
    // Still one pair after the takeovers.
    assert_eq!(pool.ed25519_pairs(KEY_LABEL).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_started_together_share_one_checkpoint_key_across_takeovers() {
    for n in 0..ROUNDS {
        round(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_to_start_when_several_unrecorded_checkpoint_keys_are_on_the_token() {
    let cluster = Cluster::new().unwrap();
    let pool = HsmPool::connect(cluster.token.hsm_settings("check"))
        .await
        .unwrap();
    pool.generate_ed25519_pair(KEY_LABEL).await.unwrap();
    pool.generate_ed25519_pair(KEY_LABEL).await.unwrap();
    let Err(err) = cluster.start("a").await else {
        panic!("a replica started with two candidate checkpoint keys and none recorded");
    };
    let text = format!("{err:#}");
    assert!(
        text.contains("2 Ed25519 key pairs labelled kb:audit:checkpoint"),
        "the refusal does not say why: {text}"
    );
    // Nothing was recorded: the operator still chooses.
    assert_eq!(
        cluster
            .pg
            .psql("postgres", "SELECT count(*) FROM audit_signing_key")
            .unwrap(),
        "0"
    );
}
