//! The release gate in PostgreSQL (its own statement: SQLite's gate is a write statement run
//! by the group commit, `sqlite/gate.rs`).
//!
//! The gate is checked in the audit log's transaction (`audit::pg::writer`), for every release
//! of a batch in one statement, right before the batch's records and leases are inserted.
//! Under READ COMMITTED each statement reads a snapshot taken when it starts, so a `DisableKey`
//! or revocation committed by any replica before the check is always seen; the release is
//! refused unless the transaction commits. The check takes no row lock.

use crate::keys::leases::GateCheck;

/// The verdict of one gate checked in the audit transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Key, versions and caller are all still allowed.
    Open,
    /// The key or a version used is no longer enabled (or below `min_decryption_version`).
    KeyClosed,
    /// A revocation covers the caller.
    Revoked,
}

/// Checks `checks` on `conn` in one statement (inside the audit log's transaction, so every
/// check reads what was committed before it ran, by any replica).
pub(crate) async fn check_in(
    conn: &mut sqlx::PgConnection,
    checks: &[&GateCheck],
) -> Result<Vec<Verdict>, sqlx::Error> {
    if checks.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: fn(&GateCheck) -> Option<i64>| checks.iter().map(|c| f(c)).collect::<Vec<_>>();
    let keys: Vec<&str> = checks.iter().map(|c| c.key.as_str()).collect();
    let wraps = col(|c| c.wrap_version.map(i64::from));
    let opens = col(|c| c.open_version.map(i64::from));
    let nows: Vec<i64> = checks.iter().map(|c| c.now).collect();
    let jobs: Vec<Option<&str>> = checks.iter().map(|c| c.job_id.as_deref()).collect();
    let subjects: Vec<&str> = checks.iter().map(|c| c.subject.as_str()).collect();
    let issuers: Vec<&str> = checks.iter().map(|c| c.issuer.as_str()).collect();
    let rows: Vec<(i64, bool, bool)> = sqlx::query_as(concat!(
        "SELECT g.i, ",
        "EXISTS (SELECT 1 FROM keys WHERE name = g.key AND state = 'ENABLED') ",
        "AND (g.wrap IS NULL OR EXISTS (SELECT 1 FROM key_versions WHERE key_name = g.key ",
        "AND version = g.wrap AND state = 'ENABLED')) ",
        "AND (g.open IS NULL OR EXISTS (SELECT 1 FROM key_versions ov JOIN keys ok ",
        "ON ok.name = ov.key_name WHERE ov.key_name = g.key AND ov.version = g.open ",
        "AND ov.state = 'ENABLED' AND ov.version >= ok.min_decryption_version)), ",
        "EXISTS (SELECT 1 FROM lease_revocations r WHERE r.expires_at > g.now ",
        "AND ((r.kind = 'job' AND r.value = g.job) OR (r.kind = 'principal' ",
        "AND r.value = g.subject AND (r.issuer = '' OR r.issuer = g.issuer)))) ",
        "FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::TEXT[], ",
        "$6::TEXT[], $7::TEXT[]) WITH ORDINALITY AS g(key, wrap, open, now, job, subject, ",
        "issuer, i) ORDER BY g.i"
    ))
    .bind(&keys)
    .bind(&wraps)
    .bind(&opens)
    .bind(&nows)
    .bind(&jobs)
    .bind(&subjects)
    .bind(&issuers)
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != checks.len() {
        return Err(sqlx::Error::Protocol("gate check lost rows".into()));
    }
    Ok(rows
        .into_iter()
        .map(|(_, key_ok, revoked)| match (key_ok, revoked) {
            (_, true) => Verdict::Revoked,
            (false, false) => Verdict::KeyClosed,
            (true, false) => Verdict::Open,
        })
        .collect())
}
