//! The catalog store's contract, one suite run against both backends: a SQLite file
//! (`sqlite::…`) and a throwaway PostgreSQL (`postgres::…`, which fails, never skips, when
//! PostgreSQL is not installed). Names are never reused, transitions are compare-and-set, the
//! release gate closes on disabled keys and versions, `min_decryption_version` and
//! revocations, and prefixes are literal — seen, where it matters, from a second handle on the
//! same database (another replica, another process).
//!
//! What only one backend has is tested with it: SQLite's group commit and GCM limit in
//! `broker/src/store/sqlite/tests.rs`; PostgreSQL's block reservations across replicas, its
//! audit guardrails and creation locks in `postgres_store.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use keybroker_broker::store::{
    KeyState, RevocationTarget, SettingsUpdate, StoreError, VersionState, Who,
};
use softhsm_tests::store::{Backend, Released, gate, lease, new_key, who};

/// Each test, once per backend.
macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $test() {
                super::$test::<softhsm_tests::store::Sqlite>().await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $test() {
                super::$test::<softhsm_tests::store::Postgres>().await;
            })*
        }
    };
}

for_each_backend!(
    names_are_never_reused_and_every_handle_sees_a_key,
    abort_create_frees_only_never_enabled_keys,
    concurrent_rotation_conflicts_and_use_is_counted,
    gate_closes_on_disabled_key_version_min_version_and_revocation,
    version_min_version_and_revocations_close_the_gate_across_handles,
    principal_revocation_matches_subject_of_any_or_one_issuer,
    destruction_cancel_only_before_deadline_and_destroyed_is_final,
    rotation_is_claimed_once_per_due_time,
    list_is_by_prefix_literally_and_paged,
);

async fn names_are_never_reused_and_every_handle_sees_a_key<B: Backend>() {
    let db = B::start().await;
    let (a, b) = (db.handle().await, db.handle().await);
    let k = a.create_key(&new_key("datasets/a")).await.unwrap();
    assert_eq!(k.versions.len(), 1);
    assert_eq!(k.versions[0].state, VersionState::PendingCreate);
    assert_eq!(k.primary_version(), None);
    assert!(matches!(
        b.create_key(&new_key("datasets/a")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    a.set_version_state("datasets/a", 1, VersionState::Enabled)
        .await
        .unwrap();
    let seen = b.get_key("datasets/a").await.unwrap().unwrap();
    assert_eq!(seen.primary_version(), Some(1));
    assert_eq!(seen.labels.get("stage").map(String::as_str), Some("dev"));
    assert!(matches!(
        a.create_key(&new_key("datasets/a")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(b.get_key("datasets/b").await.unwrap().is_none());
}

async fn abort_create_frees_only_never_enabled_keys<B: Backend>() {
    let db = B::start().await;
    let s = db.handle().await;
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

/// Creates `k` with version 1 enabled.
async fn enabled_key(s: &softhsm_tests::store::Handle) {
    s.create_key(&new_key("k")).await.unwrap();
    s.set_version_state("k", 1, VersionState::Enabled)
        .await
        .unwrap();
}

async fn concurrent_rotation_conflicts_and_use_is_counted<B: Backend>() {
    let db = B::start().await;
    let (s, other) = (db.handle().await, db.handle().await);
    enabled_key(&s).await;
    s.reserve_version("k", 2, 1).await.unwrap();
    assert!(matches!(
        s.reserve_version("k", 2, 1).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        other.reserve_version("k", 2, 1).await,
        Err(StoreError::Conflict(_))
    ));
    s.abort_version("k", 2).await.unwrap();
    assert_eq!(
        s.release(&gate(Some(1), None, None)).await,
        Released::Open(1)
    );
    let l = lease("l1");
    assert_eq!(
        s.release(&gate(Some(1), None, Some(&l))).await,
        Released::Open(2)
    );
    assert_eq!(
        s.release(&gate(Some(9), None, None)).await,
        Released::Closed
    );
}

async fn gate_closes_on_disabled_key_version_min_version_and_revocation<B: Backend>() {
    let db = B::start().await;
    let s = db.handle().await;
    enabled_key(&s).await;
    // A wrap refused after it was counted forfeits its number (see the backend's constant).
    let forfeit = u64::from(B::FORFEITS_REFUSED_WRAPS);
    let l = lease("l1");
    assert_eq!(
        s.release(&gate(None, Some(1), Some(&l))).await,
        Released::Open(0)
    );
    // Whole key disabled: nothing passes, and a closed gate records no lease.
    s.set_key_state("k", KeyState::Enabled, KeyState::Disabled, None)
        .await
        .unwrap();
    let l2 = lease("l2");
    assert_eq!(
        s.release(&gate(None, Some(1), Some(&l2))).await,
        Released::Closed
    );
    assert_eq!(
        s.release(&gate(Some(1), None, None)).await,
        Released::Closed
    );
    s.set_key_state("k", KeyState::Disabled, KeyState::Enabled, None)
        .await
        .unwrap();
    assert_eq!(
        s.release(&gate(None, Some(1), Some(&l2))).await,
        Released::Open(0)
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
        s.release(&gate(Some(2), Some(1), None)).await,
        Released::Closed
    );
    assert_eq!(
        s.release(&gate(Some(2), Some(2), None)).await,
        Released::Open(1 + forfeit)
    );
    // Version 2 disabled.
    s.swap_version_state("k", 2, VersionState::Enabled, VersionState::Disabled)
        .await
        .unwrap();
    assert_eq!(
        s.release(&gate(Some(2), None, None)).await,
        Released::Closed
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
    assert_eq!(s.release(&gate(Some(2), None, None)).await, B::REVOKED);
    let mut later = gate(Some(2), None, None);
    later.now = 50;
    // Two wraps under version 2 went through; three were refused after counting.
    assert_eq!(s.release(&later).await, Released::Open(2 + 3 * forfeit));
}

async fn version_min_version_and_revocations_close_the_gate_across_handles<B: Backend>() {
    let db = B::start().await;
    // `a` administers, `b` releases: every change is seen by the other handle's next release.
    let (a, b) = (db.handle().await, db.handle().await);
    enabled_key(&a).await;
    a.reserve_version("k", 2, 1).await.unwrap();
    assert!(matches!(
        b.reserve_version("k", 2, 1).await,
        Err(StoreError::Conflict(_))
    ));
    a.set_version_state("k", 2, VersionState::Enabled)
        .await
        .unwrap();

    // Every release wraps or leases: an open checks the opened version while recording a lease.
    let (l1, l2, l3) = (lease("l1"), lease("l2"), lease("l3"));
    assert_eq!(
        b.release(&gate(None, Some(1), Some(&l1))).await,
        Released::Open(0)
    );
    a.swap_version_state("k", 1, VersionState::Enabled, VersionState::Disabled)
        .await
        .unwrap();
    assert_eq!(
        b.release(&gate(None, Some(1), Some(&l2))).await,
        Released::Closed
    );
    assert_eq!(
        b.release(&gate(Some(2), None, None)).await,
        Released::Open(1)
    );
    a.swap_version_state("k", 1, VersionState::Disabled, VersionState::Enabled)
        .await
        .unwrap();
    a.update_settings(
        "k",
        &SettingsUpdate {
            min_decryption_version: Some(2),
            rotation: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        b.release(&gate(None, Some(1), Some(&l3))).await,
        Released::Closed
    );

    // A job revocation through one handle: the other refuses that job, and only that job.
    let l = lease("l-job");
    assert_eq!(
        b.release(&gate(Some(2), None, Some(&l))).await,
        Released::Open(2)
    );
    let marked = a
        .revoke(&RevocationTarget::Job("job-1".into()), 20, 100)
        .await
        .unwrap();
    assert_eq!(
        marked, 2,
        "the unexpired leases of the job (l1, l-job) are marked revoked"
    );
    assert!(b.is_revoked(&who(Some("job-1")), 30).await.unwrap());
    assert!(!b.is_revoked(&who(Some("job-2")), 30).await.unwrap());
    assert!(
        !b.is_revoked(&who(Some("job-1")), 100).await.unwrap(),
        "until is exclusive"
    );
    let mut g = gate(Some(2), None, None);
    g.now = 30;
    assert_eq!(b.release(&g).await, B::REVOKED);
    // Principal revocation of one issuer only.
    a.revoke(
        &RevocationTarget::Principal {
            issuer: "other".into(),
            subject: "sub".into(),
        },
        20,
        100,
    )
    .await
    .unwrap();
    assert!(!b.is_revoked(&who(None), 30).await.unwrap());
}

async fn principal_revocation_matches_subject_of_any_or_one_issuer<B: Backend>() {
    let db = B::start().await;
    let s = db.handle().await;
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

async fn destruction_cancel_only_before_deadline_and_destroyed_is_final<B: Backend>() {
    let db = B::start().await;
    let s = db.handle().await;
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

async fn rotation_is_claimed_once_per_due_time<B: Backend>() {
    let db = B::start().await;
    let s = db.handle().await;
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
    let own = if B::SEES_OWN_PENDING {
        vec![("k".to_owned(), 2)]
    } else {
        vec![]
    };
    assert_eq!(s.pending_versions().await.unwrap(), own);
}

async fn list_is_by_prefix_literally_and_paged<B: Backend>() {
    let db = B::start().await;
    let s = db.handle().await;
    for n in ["a_b/1", "a_b/2", "axb/3", "z"] {
        s.create_key(&new_key(n)).await.unwrap();
    }
    // `_` is literal in a prefix (no LIKE wildcard), and pages resume after the last name.
    let page = s.list_keys("a_b/", None, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].name, "a_b/1");
    let next = s.list_keys("a_b/", Some(&page[0].name), 10).await.unwrap();
    let names: Vec<_> = next.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["a_b/2"]);
    assert_eq!(s.list_keys("", None, 100).await.unwrap().len(), 4);
}
