//! What only the SQLite catalog has, against an in-memory database: the release gate's group
//! commit and its GCM use limit. The contract both backends keep is the one store suite,
//! `softhsm-tests/tests/store.rs`, run against SQLite and PostgreSQL.

use std::collections::BTreeMap;

use super::*;
use crate::store::{LeaseRecord, Purpose};

fn new_key(name: &str) -> NewKey {
    NewKey {
        name: name.into(),
        purpose: Purpose::DataKey,
        labels: BTreeMap::from([("stage".into(), "dev".into())]),
        hsm_id: "hsm-a".into(),
        created_at: 1_700_000_000,
        rotation_period_secs: None,
        next_rotation_at: None,
    }
}

fn gate(wrap: Option<u32>, lease: Option<&LeaseRecord>) -> ReleaseGate<'_> {
    ReleaseGate {
        key: "k",
        wrap_version: wrap,
        open_version: None,
        lease,
        who: Who {
            issuer: "iss",
            subject: "sub",
            job_id: Some("job-1"),
        },
        now: 10,
    }
}

async fn enabled_key(s: &SqliteStore) {
    s.create_key(&new_key("k")).await.unwrap();
    s.set_version_state("k", 1, VersionState::Enabled)
        .await
        .unwrap();
}

fn lease(id: &str) -> LeaseRecord {
    LeaseRecord {
        lease_id: id.into(),
        key_name: "k".into(),
        version: 1,
        op: "GenerateDataKey",
        issuer: "iss".into(),
        subject: "sub".into(),
        job_id: Some("job-1".into()),
        issued_at: 10,
        expires_at: 100,
    }
}

#[tokio::test]
async fn group_commit_isolates_each_gate_and_counts_every_open_one() {
    let s = SqliteStore::in_memory().await.unwrap();
    enabled_key(&s).await;
    let leases: Vec<LeaseRecord> = (0..100).map(|i| lease(&format!("l{i}"))).collect();
    let dup = lease("l0");
    let mut calls = Vec::new();
    for (i, l) in leases.iter().enumerate() {
        calls.push((i, Some(1), Some(l)));
        // Interleaved with each open gate: a closed one (unknown version).
        calls.push((1000 + i, Some(9), None));
    }
    let results = futures_join(&s, &calls).await;
    let mut opened = 0;
    for ((id, _, _), r) in calls.iter().zip(&results) {
        match (*id, r) {
            (i, Ok(GateOutcome::Open(_))) if i < 1000 => opened += 1,
            (i, Ok(GateOutcome::Closed)) if i >= 1000 => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(opened, 100);
    // A lease id already used fails its batch, which is rolled back: it counts nothing.
    assert!(s.release(&gate(Some(1), Some(&dup))).await.is_err());
    // The count after the batch: every open gate counted once, nothing from the others.
    assert_eq!(
        s.release(&gate(Some(1), None)).await.unwrap(),
        GateOutcome::Open(101)
    );
}

/// Runs every gate concurrently (so they share group commits) and collects the outcomes.
async fn futures_join(
    s: &SqliteStore,
    calls: &[(usize, Option<u32>, Option<&LeaseRecord>)],
) -> Vec<Result<GateOutcome, StoreError>> {
    let mut set = tokio::task::JoinSet::new();
    for (n, (_, wrap, l)) in calls.iter().enumerate() {
        let s = s.clone();
        let l = l.cloned();
        let wrap = *wrap;
        set.spawn(async move {
            let g = gate(wrap, l.as_ref());
            (n, s.release(&g).await)
        });
    }
    let mut out: Vec<Option<Result<GateOutcome, StoreError>>> =
        (0..calls.len()).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        let (n, r) = done.unwrap();
        out[n] = Some(r);
    }
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn gate_enforces_the_gcm_use_limit_where_it_counts() {
    let s = SqliteStore::in_memory().await.unwrap();
    enabled_key(&s).await;
    let last_allowed = crate::keys::GCM_RANDOM_IV_LIMIT - 2;
    sqlx::query("UPDATE key_versions SET wrap_count = ?1 WHERE key_name = 'k'")
        .bind(i64::try_from(last_allowed).unwrap())
        .execute(&s.catalog.pool)
        .await
        .unwrap();
    assert_eq!(
        s.release(&gate(Some(1), None)).await.unwrap(),
        GateOutcome::Open(last_allowed + 1)
    );
    assert_eq!(
        s.release(&gate(Some(1), None)).await.unwrap(),
        GateOutcome::Closed
    );
}
