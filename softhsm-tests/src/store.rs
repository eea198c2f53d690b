//! The catalog store under test, whatever the backend: the one store suite
//! (`tests/store.rs`) runs against SQLite and against a throwaway PostgreSQL through
//! [`Backend`]. A backend is one empty database; [`Backend::handle`] opens another handle on it
//! (a second replica on PostgreSQL, a second process's store on the same SQLite file), and
//! [`Handle::release`] releases the way the broker does with that backend.
//!
//! Where the backends really differ, the difference is a named constant of [`Backend`], not a
//! branch in a test.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test fixtures: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use keybroker_broker::audit::{AuditError, AuditLog, AuditRecord, Op, PgAuditLog};
use keybroker_broker::keys::leases::{GateCheck, ReleaseTicket};
use keybroker_broker::store::{
    GateOutcome, LeaseRecord, NewKey, PostgresStore, Purpose, ReleaseGate, SqliteStore, Store, Who,
};
use sqlx::postgres::PgConnectOptions;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::postgres::TestPostgres;

/// What a release came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Allowed, with the use count (0 without a wrap).
    Open(u64),
    /// Key or version no longer allowed.
    Closed,
    /// A revocation covers the caller (PostgreSQL's audit transaction says why it refused).
    Revoked,
}

/// A catalog backend under test.
pub trait Backend: Sized {
    /// What a release refused by a revocation comes to: PostgreSQL's audit transaction says
    /// "revoked"; SQLite's gate statement only finds no row to change.
    const REVOKED: Released;
    /// Whether a wrap refused after its use count was taken forfeits that number: PostgreSQL
    /// counts in the store and refuses in the audit transaction; SQLite's gate counts only
    /// the wraps it lets through.
    const FORFEITS_REFUSED_WRAPS: bool;
    /// Whether `pending_versions` lists a version the asking handle is creating itself: a
    /// SQLite catalog has one owner and lists it; a PostgreSQL replica leaves every version
    /// whose creation lock is held, its own included, to its creator.
    const SEES_OWN_PENDING: bool;

    /// Starts an empty database (PostgreSQL: fails, never skips, when it is not installed).
    fn start() -> impl Future<Output = Self>;

    /// Opens one more handle on the database.
    fn handle(&self) -> impl Future<Output = Handle>;
}

/// One handle on a backend's database.
pub struct Handle {
    store: Arc<dyn Store>,
    /// The PostgreSQL audit log, whose transaction checks the gate and records the lease.
    log: Option<PgAuditLog>,
    _keep: Option<(TempDir, TaskTracker, CancellationToken)>,
}

impl std::ops::Deref for Handle {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

impl Handle {
    /// Releases as the broker does with this backend: the store's gate, then (PostgreSQL) the
    /// audit append with the ticket, which checks the gate again and records the lease in one
    /// transaction.
    pub async fn release(&self, g: &ReleaseGate<'_>) -> Released {
        let count = match self.store.release(g).await.unwrap() {
            GateOutcome::Open(n) => n,
            GateOutcome::Closed => return Released::Closed,
        };
        let Some(log) = &self.log else {
            return Released::Open(count);
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
        match log.append_release(record, ticket).await {
            Ok((_, None)) => Released::Open(count),
            Ok((_, Some(_))) => panic!("the PostgreSQL log must record the lease itself"),
            Err(AuditError::GateClosed { revoked: false }) => Released::Closed,
            Err(AuditError::GateClosed { revoked: true }) => Released::Revoked,
            Err(e) => panic!("append failed: {e}"),
        }
    }
}

/// A SQLite catalog file in a temp dir.
pub struct Sqlite {
    dir: TempDir,
}

impl Backend for Sqlite {
    const REVOKED: Released = Released::Closed;
    const FORFEITS_REFUSED_WRAPS: bool = false;
    const SEES_OWN_PENDING: bool = true;

    async fn start() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn handle(&self) -> Handle {
        let store = SqliteStore::open(&self.dir.path().join("catalog.db"))
            .await
            .unwrap();
        Handle {
            store: Arc::new(store),
            log: None,
            _keep: None,
        }
    }
}

/// A throwaway PostgreSQL server.
pub struct Postgres {
    /// The server (for `psql` checks).
    pub pg: TestPostgres,
}

impl Backend for Postgres {
    const REVOKED: Released = Released::Revoked;
    const FORFEITS_REFUSED_WRAPS: bool = true;
    const SEES_OWN_PENDING: bool = false;

    async fn start() -> Self {
        Self {
            pg: TestPostgres::start().unwrap(),
        }
    }

    async fn handle(&self) -> Handle {
        let opts = PgConnectOptions::from_str(&self.pg.url_for("postgres")).unwrap();
        let store = PostgresStore::connect(opts, 4).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let log = PgAuditLog::open(store.pool().clone(), dir.path(), None, &tasks, &cancel)
            .await
            .unwrap();
        Handle {
            store: Arc::new(store),
            log: Some(log),
            _keep: Some((dir, tasks, cancel)),
        }
    }
}

/// A `DATA_KEY` key named `name` with one label, `stage = dev`.
#[must_use]
pub fn new_key(name: &str) -> NewKey {
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

/// Subject `sub` of issuer `iss`, with `job`.
#[must_use]
pub fn who(job: Option<&str>) -> Who<'_> {
    Who {
        issuer: "iss",
        subject: "sub",
        job_id: job,
    }
}

/// A release under key `k` by job `job-1` at time 10.
#[must_use]
pub fn gate<'a>(
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

/// A lease of job `job-1` on `k` v1, issued at 10, expiring at 100.
#[must_use]
pub fn lease(id: &str) -> LeaseRecord {
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
