//! What only the PostgreSQL catalog has, against a real throwaway PostgreSQL: use counts
//! reserved a block per replica, a refused release logged in the audit transaction, the audit
//! table's append-only guardrail and creation locks across replicas. The contract both
//! backends keep (gate, revocations, compare-and-set transitions, literal prefixes) is the one
//! suite in `store.rs`. Fails (does not skip) when PostgreSQL is not installed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::str::FromStr;

use keybroker_broker::store::{
    KeyState, PostgresStore, Store, StoreError, VersionState, WRAP_BLOCK,
};
use softhsm_tests::postgres::TestPostgres;
use softhsm_tests::store::{Backend, Postgres, Released, gate, lease, new_key};
use sqlx::postgres::PgConnectOptions;

async fn replica(pg: &TestPostgres, db: &str) -> PostgresStore {
    let opts = PgConnectOptions::from_str(&pg.url_for(db)).unwrap();
    PostgresStore::connect(opts, 4).await.unwrap()
}

#[tokio::test]
async fn replicas_share_one_catalog_and_a_disable_on_one_closes_the_gate_on_the_other() {
    let db = Postgres::start().await;
    let pg = &db.pg;
    // Two replicas starting together: migrations apply once (sqlx's advisory lock).
    let (a, b) = tokio::join!(db.handle(), db.handle());
    a.create_key(&new_key("k")).await.unwrap();
    a.set_version_state("k", 1, VersionState::Enabled)
        .await
        .unwrap();
    assert_eq!(
        b.get_key("k").await.unwrap().unwrap().primary_version(),
        Some(1)
    );

    // Use counts are reserved a block per replica: the ranges never overlap.
    let l1 = lease("l1");
    assert_eq!(
        b.release(&gate(Some(1), None, Some(&l1))).await,
        Released::Open(1)
    );
    assert_eq!(
        a.release(&gate(Some(1), None, None)).await,
        Released::Open(WRAP_BLOCK + 1)
    );
    a.set_key_state("k", KeyState::Enabled, KeyState::Disabled, None)
        .await
        .unwrap();
    // The very next release on the other replica is refused in the audit transaction (its
    // count came from the block in memory), is logged as refused, and records no lease.
    let l2 = lease("l2");
    assert_eq!(
        b.release(&gate(Some(1), None, Some(&l2))).await,
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
        a.release(&gate(Some(1), None, None)).await,
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
