//! Catalog store tests against an in-memory SQLite database.

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

#[tokio::test]
async fn create_get_and_names_are_never_reused() {
    let s = SqliteStore::in_memory().await.unwrap();
    let k = s.create_key(&new_key("datasets/a")).await.unwrap();
    assert_eq!(k.versions.len(), 1);
    assert_eq!(k.versions[0].state, VersionState::PendingCreate);
    assert_eq!(k.primary_version(), None);
    s.set_version_state("datasets/a", 1, VersionState::Enabled)
        .await
        .unwrap();
    let k = s.get_key("datasets/a").await.unwrap().unwrap();
    assert_eq!(k.primary_version(), Some(1));
    assert_eq!(k.labels.get("stage").map(String::as_str), Some("dev"));
    assert!(matches!(
        s.create_key(&new_key("datasets/a")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(s.get_key("datasets/b").await.unwrap().is_none());
}

#[tokio::test]
async fn abort_create_frees_only_never_enabled_keys() {
    let s = SqliteStore::in_memory().await.unwrap();
    s.create_key(&new_key("a")).await.unwrap();
    s.abort_create("a").await.unwrap();
    assert!(s.get_key("a").await.unwrap().is_none());
    s.create_key(&new_key("a")).await.unwrap();
    s.set_version_state("a", 1, VersionState::Enabled)
        .await
        .unwrap();
    assert!(matches!(
        s.abort_create("a").await,
        Err(StoreError::Conflict(_))
    ));
}

fn who<'a>(job: Option<&'a str>) -> Who<'a> {
    Who {
        issuer: "iss",
        subject: "sub",
        job_id: job,
    }
}

fn gate<'a>(
    wrap: Option<u32>,
    open: Option<u32>,
    lease: Option<&'a LeaseRecord>,
) -> ReleaseGate<'a> {
    ReleaseGate {
        key: "k",
        wrap_version: wrap,
        open_version: open,
        lease,
        who: who(Some("job-1")),
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
async fn concurrent_rotation_conflicts_and_use_is_counted() {
    let s = SqliteStore::in_memory().await.unwrap();
    enabled_key(&s).await;
    s.reserve_version("k", 2, 1).await.unwrap();
    assert!(matches!(
        s.reserve_version("k", 2, 1).await,
        Err(StoreError::Conflict(_))
    ));
    s.abort_version("k", 2).await.unwrap();
    assert_eq!(
        s.release(&gate(Some(1), None, None)).await.unwrap(),
        GateOutcome::Open(1)
    );
    let l = lease("l1");
    assert_eq!(
        s.release(&gate(Some(1), None, Some(&l))).await.unwrap(),
        GateOutcome::Open(2)
    );
    assert_eq!(
        s.release(&gate(Some(9), None, None)).await.unwrap(),
        GateOutcome::Closed
    );
}

#[tokio::test]
async fn gate_closes_on_disabled_key_version_min_version_and_revocation() {
    let s = SqliteStore::in_memory().await.unwrap();
    enabled_key(&s).await;
    let l = lease("l1");
    let open = |o| GateOutcome::Open(o);
    assert_eq!(
        s.release(&gate(None, Some(1), Some(&l))).await.unwrap(),
        open(0)
    );
    // Whole key disabled: nothing passes, and a closed gate records no lease.
    s.set_key_state("k", KeyState::Enabled, KeyState::Disabled, None)
        .await
        .unwrap();
    let l2 = lease("l2");
    assert_eq!(
        s.release(&gate(None, Some(1), Some(&l2))).await.unwrap(),
        GateOutcome::Closed
    );
    assert_eq!(
        s.release(&gate(Some(1), None, None)).await.unwrap(),
        GateOutcome::Closed
    );
    s.set_key_state("k", KeyState::Disabled, KeyState::Enabled, None)
        .await
        .unwrap();
    assert_eq!(
        s.release(&gate(None, Some(1), Some(&l2))).await.unwrap(),
        open(0)
    );
    // Version 1 below min_decryption_version: opening it is refused, wrapping under 2 is not.
    s.reserve_version("k", 2, 1).await.unwrap();
    s.set_version_state("k", 2, VersionState::Enabled)
        .await
        .unwrap();
    let up = SettingsUpdate {
        min_decryption_version: Some(2),
        rotation: None,
    };
    s.update_settings("k", &up).await.unwrap();
    assert_eq!(
        s.release(&gate(Some(2), Some(1), None)).await.unwrap(),
        GateOutcome::Closed
    );
    assert_eq!(
        s.release(&gate(Some(2), Some(2), None)).await.unwrap(),
        open(1)
    );
    // Version 2 disabled.
    s.swap_version_state("k", 2, VersionState::Enabled, VersionState::Disabled)
        .await
        .unwrap();
    assert_eq!(
        s.release(&gate(Some(2), None, None)).await.unwrap(),
        GateOutcome::Closed
    );
    // Job revoked until 50: closed before, open after.
    s.swap_version_state("k", 2, VersionState::Disabled, VersionState::Enabled)
        .await
        .unwrap();
    let marked = s
        .revoke(&RevocationTarget::Job("job-1".into()), 10, 50)
        .await
        .unwrap();
    assert_eq!(marked, 2, "the two unexpired leases of job-1");
    assert!(s.is_revoked(&who(Some("job-1")), 49).await.unwrap());
    assert!(!s.is_revoked(&who(Some("job-2")), 49).await.unwrap());
    assert!(!s.is_revoked(&who(Some("job-1")), 50).await.unwrap());
    assert_eq!(
        s.release(&gate(Some(2), None, None)).await.unwrap(),
        GateOutcome::Closed
    );
    let mut later = gate(Some(2), None, None);
    later.now = 50;
    assert_eq!(s.release(&later).await.unwrap(), open(2));
}

#[tokio::test]
async fn principal_revocation_matches_subject_of_any_or_one_issuer() {
    let s = SqliteStore::in_memory().await.unwrap();
    let any = RevocationTarget::Principal {
        issuer: String::new(),
        subject: "sub".into(),
    };
    s.revoke(&any, 0, 10).await.unwrap();
    assert!(s.is_revoked(&who(None), 5).await.unwrap());
    let other = RevocationTarget::Principal {
        issuer: "other".into(),
        subject: "sub2".into(),
    };
    s.revoke(&other, 0, 10).await.unwrap();
    let w = Who {
        issuer: "iss",
        subject: "sub2",
        job_id: None,
    };
    assert!(!s.is_revoked(&w, 5).await.unwrap());
}

#[tokio::test]
async fn destruction_cancel_only_before_deadline_and_destroyed_is_final() {
    let s = SqliteStore::in_memory().await.unwrap();
    enabled_key(&s).await;
    s.set_key_state(
        "k",
        KeyState::Enabled,
        KeyState::PendingDestruction,
        Some(100),
    )
    .await
    .unwrap();
    assert!(s.due_destructions(99).await.unwrap().is_empty());
    assert_eq!(s.next_deadline().await.unwrap(), Some(100));
    assert!(matches!(
        s.cancel_destruction("k", 100).await,
        Err(StoreError::Conflict(_))
    ));
    s.cancel_destruction("k", 99).await.unwrap();
    let k = s.get_key("k").await.unwrap().unwrap();
    assert_eq!((k.state, k.destroy_after), (KeyState::Disabled, None));
    s.set_key_state(
        "k",
        KeyState::Disabled,
        KeyState::PendingDestruction,
        Some(100),
    )
    .await
    .unwrap();
    assert_eq!(s.due_destructions(100).await.unwrap().len(), 1);
    s.mark_destroyed("k").await.unwrap();
    let k = s.get_key("k").await.unwrap().unwrap();
    assert_eq!(k.state, KeyState::Destroyed);
    assert!(
        k.versions
            .iter()
            .all(|v| v.state == VersionState::Destroyed)
    );
    assert!(matches!(
        s.mark_destroyed("k").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.swap_version_state("k", 1, VersionState::Destroyed, VersionState::Enabled)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.create_key(&new_key("k")).await,
        Err(StoreError::AlreadyExists(_))
    ));
}

#[tokio::test]
async fn rotation_is_claimed_once_per_due_time() {
    let s = SqliteStore::in_memory().await.unwrap();
    enabled_key(&s).await;
    let up = SettingsUpdate {
        min_decryption_version: None,
        rotation: Some(Some((3600, 1000))),
    };
    s.update_settings("k", &up).await.unwrap();
    assert!(s.due_rotations(999).await.unwrap().is_empty());
    assert_eq!(s.due_rotations(1000).await.unwrap().len(), 1);
    s.claim_rotation("k", 2, 1000, 4600, 1000).await.unwrap();
    // A second claim of the same due time (a restart, another replica) loses.
    assert!(matches!(
        s.claim_rotation("k", 2, 1000, 4600, 1000).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.due_rotations(4599).await.unwrap().is_empty());
    assert_eq!(
        s.pending_versions().await.unwrap(),
        vec![("k".to_owned(), 2)]
    );
}

#[tokio::test]
async fn list_is_by_prefix_literally_and_paged() {
    let s = SqliteStore::in_memory().await.unwrap();
    for n in ["a_b/1", "a_b/2", "axb/3", "z"] {
        s.create_key(&new_key(n)).await.unwrap();
    }
    let page = s.list_keys("a_b/", None, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    let next = s.list_keys("a_b/", Some(&page[0].name), 10).await.unwrap();
    let names: Vec<_> = next.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["a_b/2"]);
    assert_eq!(s.list_keys("", None, 100).await.unwrap().len(), 4);
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
    assert!(s.release(&gate(Some(1), None, Some(&dup))).await.is_err());
    // The count after the batch: every open gate counted once, nothing from the others.
    assert_eq!(
        s.release(&gate(Some(1), None, None)).await.unwrap(),
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
            let g = gate(wrap, None, l.as_ref());
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
        s.release(&gate(Some(1), None, None)).await.unwrap(),
        GateOutcome::Open(last_allowed + 1)
    );
    assert_eq!(
        s.release(&gate(Some(1), None, None)).await.unwrap(),
        GateOutcome::Closed
    );
}
