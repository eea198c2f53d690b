//! The PostgreSQL catalog against a real throwaway PostgreSQL: the same contract as SQLite
//! (gate, revocations, compare-and-set transitions, literal prefixes), seen from two store
//! handles the way two replicas see it, and the audit table's append-only guardrail. The
//! replicas' release gate runs in the audit log's transaction (DESIGN §6): the tests release
//! the way the broker does — count in the store, then append the record with its ticket.
//! Fails (does not skip) when PostgreSQL is not installed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::str::FromStr;

use keybroker_broker::audit::{AuditError, AuditLog, AuditRecord, Op, PgAuditLog};
use keybroker_broker::keys::leases::{GateCheck, ReleaseTicket};
use keybroker_broker::store::{
    GateOutcome, KeyState, LeaseRecord, NewKey, PostgresStore, Purpose, ReleaseGate,
    RevocationTarget, Store, StoreError, VersionState, WRAP_BLOCK, Who,
};
use softhsm_tests::postgres::TestPostgres;
use sqlx::postgres::PgConnectOptions;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

async fn replica(pg: &TestPostgres, db: &str) -> PostgresStore {
    let opts = PgConnectOptions::from_str(&pg.url_for(db)).unwrap();
    PostgresStore::connect(opts, 4).await.unwrap()
}

/// A replica's catalog and audit log.
struct Replica {
    store: PostgresStore,
    log: PgAuditLog,
    _dir: tempfile::TempDir,
    _tasks: (TaskTracker, CancellationToken),
}

/// What a release came to.
#[derive(Debug, PartialEq, Eq)]
enum Released {
    /// Allowed, with the use count (0 without a wrap).
    Open(u64),
    /// Key or version no longer allowed (by the store or the audit transaction).
    Closed,
    /// A revocation covers the caller (the audit transaction said so).
    Revoked,
}

impl Replica {
    async fn open(pg: &TestPostgres) -> Self {
        let store = replica(pg, "postgres").await;
        let dir = tempfile::tempdir().unwrap();
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let log = PgAuditLog::open(store.pool().clone(), dir.path(), None, &tasks, &cancel)
            .await
            .unwrap();
        Self {
            store,
            log,
            _dir: dir,
            _tasks: (tasks, cancel),
        }
    }

    /// As the broker releases: the store's gate (use count), then the audit append with the
    /// ticket, which checks the gate again and records the lease in one transaction.
    async fn release(&self, g: &ReleaseGate<'_>) -> Released {
        let count = match self.store.release(g).await.unwrap() {
            GateOutcome::Open(n) => n,
            GateOutcome::Closed => return Released::Closed,
        };
        let ticket = ReleaseTicket {
            check: GateCheck {
                key: g.key.to_owned(),
                wrap_version: g.wrap_version,
                open_version: g.open_version,
                issuer: g.who.issuer.to_owned(),
                subject: g.who.subject.to_owned(),
                job_id: g.who.job_id.map(str::to_owned),
                now: g.now,
            },
            lease: g.lease.cloned(),
        };
        let mut record = AuditRecord::new(Op::GenerateDataKey, "rid".into(), "test".into());
        record.lease_id = g.lease.map(|l| l.lease_id.clone());
        "ok".clone_into(&mut record.outcome.code);
        match self.log.append_release(record, ticket).await {
            Ok((_, None)) => Released::Open(count),
            Ok((_, Some(_))) => panic!("the PostgreSQL log must record the lease itself"),
            Err(AuditError::GateClosed { revoked: false }) => Released::Closed,
            Err(AuditError::GateClosed { revoked: true }) => Released::Revoked,
            Err(e) => panic!("append failed: {e}"),
        }
    }
}

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

fn who(job: Option<&str>) -> Who<'_> {
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
async fn replicas_share_one_catalog_and_a_disable_on_one_closes_the_gate_on_the_other() {
    let pg = TestPostgres::start().unwrap();
    // Two replicas starting together: migrations apply once (sqlx's advisory lock).
    let (ra, rb) = tokio::join!(Replica::open(&pg), Replica::open(&pg));
    let (a, b) = (&ra.store, &rb.store);
    let k = a.create_key(&new_key("k")).await.unwrap();
    assert_eq!(k.versions[0].state, VersionState::PendingCreate);
    assert!(matches!(
        b.create_key(&new_key("k")).await,
        Err(StoreError::AlreadyExists(_))
    ));
    a.set_version_state("k", 1, VersionState::Enabled)
        .await
        .unwrap();
    let seen = b.get_key("k").await.unwrap().unwrap();
    assert_eq!(seen.primary_version(), Some(1));
    assert_eq!(seen.labels.get("stage").map(String::as_str), Some("dev"));

    // Use counts are reserved a block per replica: the ranges never overlap.
    let l1 = lease("l1");
    assert_eq!(
        rb.release(&gate(Some(1), None, Some(&l1))).await,
        Released::Open(1)
    );
    assert_eq!(
        ra.release(&gate(Some(1), None, None)).await,
        Released::Open(WRAP_BLOCK + 1)
    );
    a.set_key_state("k", KeyState::Enabled, KeyState::Disabled, None)
        .await
        .unwrap();
    // The very next release on the other replica is refused in the audit transaction (its
    // count came from the block in memory), is logged as refused, and records no lease.
    let l2 = lease("l2");
    assert_eq!(
        rb.release(&gate(Some(1), None, Some(&l2))).await,
        Released::Closed
    );
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM leases").unwrap(),
        "1"
    );
    let last = pg
        .psql(
            "postgres",
            "SELECT convert_from(body, 'UTF8')::jsonb->'outcome'->>'code' || ' ' || \
             coalesce(convert_from(body, 'UTF8')::jsonb->>'lease_id', 'none') \
             FROM audit_entries ORDER BY idx DESC LIMIT 1",
        )
        .unwrap();
    assert_eq!(last, "failed_precondition none");
    // /metrics counts from either replica: one disabled key, one unexpired lease.
    let g = b.gauges(0).await.unwrap();
    assert_eq!(g.keys_by_state, vec![("DISABLED".to_owned(), 1)]);
    assert_eq!(g.active_leases, Some(1));
    // Compare-and-set: the second replica's identical transition loses.
    assert!(matches!(
        b.set_key_state("k", KeyState::Enabled, KeyState::Disabled, None)
            .await,
        Err(StoreError::Conflict(_))
    ));
    b.set_key_state("k", KeyState::Disabled, KeyState::Enabled, None)
        .await
        .unwrap();
    assert_eq!(
        ra.release(&gate(Some(1), None, None)).await,
        Released::Open(WRAP_BLOCK + 2)
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT wrap_count FROM key_versions WHERE key_name = 'k'"
        )
        .unwrap(),
        (2 * WRAP_BLOCK).to_string(),
        "two reservations, one per replica: no write per release"
    );
}

#[tokio::test]
async fn version_min_version_and_revocations_close_the_gate_across_replicas() {
    let pg = TestPostgres::start().unwrap();
    let (ra, rb) = (Replica::open(&pg).await, Replica::open(&pg).await);
    let (a, b) = (&ra.store, &rb.store);
    a.create_key(&new_key("k")).await.unwrap();
    a.set_version_state("k", 1, VersionState::Enabled)
        .await
        .unwrap();
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
        rb.release(&gate(None, Some(1), Some(&l1))).await,
        Released::Open(0)
    );
    a.swap_version_state("k", 1, VersionState::Enabled, VersionState::Disabled)
        .await
        .unwrap();
    assert_eq!(
        rb.release(&gate(None, Some(1), Some(&l2))).await,
        Released::Closed
    );
    assert_eq!(
        rb.release(&gate(Some(2), None, None)).await,
        Released::Open(1)
    );
    a.swap_version_state("k", 1, VersionState::Disabled, VersionState::Enabled)
        .await
        .unwrap();
    a.update_settings(
        "k",
        &keybroker_broker::store::SettingsUpdate {
            min_decryption_version: Some(2),
            rotation: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        rb.release(&gate(None, Some(1), Some(&l3))).await,
        Released::Closed
    );

    // A job revocation on one replica: the other refuses that job, and only that job.
    let l = lease("l-job");
    assert_eq!(
        rb.release(&gate(Some(2), None, Some(&l))).await,
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
    assert_eq!(rb.release(&g).await, Released::Revoked);
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

#[tokio::test]
async fn destruction_rotation_and_listing_follow_the_sqlite_contract() {
    let pg = TestPostgres::start().unwrap();
    let s = replica(&pg, "postgres").await;
    for name in ["a_b/1", "a_b/2", "axb/1", "a_c/1"] {
        s.create_key(&new_key(name)).await.unwrap();
    }
    // `_` is literal in a prefix (no LIKE wildcard), and pages resume after the last name.
    let page: Vec<String> = s
        .list_keys("a_b/", None, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(page, ["a_b/1"]);
    let rest: Vec<String> = s
        .list_keys("a_b/", Some("a_b/1"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(rest, ["a_b/2"]);
    // All four are being created through `s` (it holds their creation locks), so recovery on
    // another replica leaves them alone.
    let other = replica(&pg, "postgres").await;
    assert!(other.pending_versions().await.unwrap().is_empty());
    s.abort_create("axb/1").await.unwrap();
    assert!(s.get_key("axb/1").await.unwrap().is_none());

    s.set_version_state("a_c/1", 1, VersionState::Enabled)
        .await
        .unwrap();
    s.set_key_state(
        "a_c/1",
        KeyState::Enabled,
        KeyState::PendingDestruction,
        Some(500),
    )
    .await
    .unwrap();
    assert_eq!(s.next_deadline().await.unwrap(), Some(500));
    assert!(s.due_destructions(499).await.unwrap().is_empty());
    assert!(matches!(
        s.cancel_destruction("a_c/1", 500).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.due_destructions(500).await.unwrap().len(), 1);
    s.mark_destroyed("a_c/1").await.unwrap();
    let k = s.get_key("a_c/1").await.unwrap().unwrap();
    assert_eq!(k.state, KeyState::Destroyed);
    assert!(
        k.versions
            .iter()
            .all(|v| v.state == VersionState::Destroyed)
    );

    s.set_version_state("a_b/1", 1, VersionState::Enabled)
        .await
        .unwrap();
    s.update_settings(
        "a_b/1",
        &keybroker_broker::store::SettingsUpdate {
            min_decryption_version: None,
            rotation: Some(Some((60, 100))),
        },
    )
    .await
    .unwrap();
    assert_eq!(s.due_rotations(100).await.unwrap().len(), 1);
    s.claim_rotation("a_b/1", 2, 100, 160, 100).await.unwrap();
    assert!(matches!(
        s.claim_rotation("a_b/1", 2, 100, 160, 100).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.due_rotations(100).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_broker_role_cannot_update_delete_or_truncate_audit_entries() {
    let pg = TestPostgres::start().unwrap();
    // The broker runs as its own role owning its database, as in production.
    pg.psql("postgres", "CREATE ROLE keybroker LOGIN").unwrap();
    pg.psql("postgres", "CREATE DATABASE keybroker OWNER keybroker")
        .unwrap();
    let url = format!("postgres://keybroker@127.0.0.1:{}/keybroker", pg.port);
    let store = PostgresStore::connect(PgConnectOptions::from_str(&url).unwrap(), 2)
        .await
        .unwrap();
    let pool = store.pool();
    sqlx::query("INSERT INTO audit_entries (idx, body) VALUES (0, 'x')")
        .execute(pool)
        .await
        .unwrap();
    for sql in [
        "UPDATE audit_entries SET body = 'y' WHERE idx = 0",
        "DELETE FROM audit_entries WHERE idx = 0",
        "TRUNCATE audit_entries",
    ] {
        let e = sqlx::query(sql).execute(pool).await.unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{sql}: {e}");
    }
    // Even a superuser (who bypasses privileges) meets the trigger.
    for sql in [
        "UPDATE audit_entries SET body = 'y' WHERE idx = 0",
        "DELETE FROM audit_entries WHERE idx = 0",
        "TRUNCATE audit_entries",
    ] {
        let e = pg.psql("keybroker", sql).unwrap_err().to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(
        pg.psql(
            "keybroker",
            "SELECT convert_from(body, 'UTF8') FROM audit_entries"
        )
        .unwrap(),
        "x"
    );
}

#[tokio::test]
async fn recovery_on_another_replica_skips_versions_still_being_created_and_takes_abandoned_ones() {
    let pg = TestPostgres::start().unwrap();
    let (a, b) = tokio::join!(replica(&pg, "postgres"), replica(&pg, "postgres"));
    // A is creating version 1 (between the catalog reservation and the HSM object).
    a.create_key(&new_key("k")).await.unwrap();
    // B starts now: its recovery must leave A's in-flight version alone.
    assert_eq!(b.pending_versions().await.unwrap(), vec![]);
    a.set_version_state("k", 1, VersionState::Enabled)
        .await
        .unwrap();
    // A rotates (reserves version 2), then dies before the HSM object exists.
    a.reserve_version("k", 2, 20).await.unwrap();
    assert_eq!(b.pending_versions().await.unwrap(), vec![]);
    drop(a);
    // Its creation lock ends with its session: B's recovery now owns version 2 ...
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pending = b.pending_versions().await.unwrap();
        if pending == vec![("k".to_owned(), 2)] {
            break;
        }
        assert!(pending.is_empty(), "{pending:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead replica's creation lock was not released"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // ... and a third replica starting meanwhile does not recover it a second time.
    let c = replica(&pg, "postgres").await;
    assert_eq!(c.pending_versions().await.unwrap(), vec![]);
    b.set_version_state("k", 2, VersionState::Enabled)
        .await
        .unwrap();
    assert_eq!(c.pending_versions().await.unwrap(), vec![]);
    // Released on confirmation: a version reserved and dropped by C leaves nothing behind.
    c.reserve_version("k", 3, 30).await.unwrap();
    c.abort_version("k", 3).await.unwrap();
    assert_eq!(b.pending_versions().await.unwrap(), vec![]);
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1801614947"
        )
        .unwrap(),
        "0"
    );
}
