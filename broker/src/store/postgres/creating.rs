//! Creation locks: a version in `PENDING_CREATE` is owned by whoever holds its PostgreSQL
//! advisory lock, so start-up recovery on one replica never completes a version another
//! replica is still creating (two HSM objects under one label).
//!
//! The creator takes the lock *before* the reservation becomes visible (key creation, manual
//! and scheduled rotation) and holds it until the version is confirmed or dropped; a lock
//! already held means someone else is at that version, which the creator reports as the
//! conflict it is. Recovery takes each pending version's lock the same way (never waiting): a
//! version whose lock is held is in flight and is skipped; one whose lock is free was abandoned (its creator's session
//! ended with its process), so recovery owns it, re-checks that it is still pending, and holds
//! the lock until it confirms it. Each lock lives on its own connection outside the pool (a
//! session lock is its connection's; pooled connections are shared).

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnection, PgPool};

use crate::store::StoreError;

/// First key of every creation lock ("kbvc" in ASCII); the two-key space of advisory locks is
/// separate from the one-key space the audit publisher uses.
const NAMESPACE: i32 = 0x6b62_7663;

/// The creation locks this replica holds, by (key, version).
#[derive(Debug, Default)]
pub(super) struct Creating {
    held: Mutex<HashMap<(String, u32), PgConnection>>,
}

impl Creating {
    /// Takes the lock of `name` version `version` and returns its connection; `None` when
    /// another replica holds it (creating or recovering that version, or — rarely — one whose
    /// lock key collides). Never waits: a creator that hangs must not hang others.
    pub(super) async fn lock(
        pool: &PgPool,
        name: &str,
        version: u32,
    ) -> Result<Option<PgConnection>, StoreError> {
        let mut conn = pool.acquire().await?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(NAMESPACE)
            .bind(lock_key(name, version))
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(conn))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Keeps `conn` (holding the lock of `name` version `version`) until [`Creating::release`].
    pub(super) fn keep(&self, name: &str, version: u32, conn: PgConnection) {
        // A replaced connection (not expected: one reservation per version) ends its session.
        self.held().insert((name.to_owned(), version), conn);
    }

    /// Releases the lock of `name` version `version`, if this replica holds it.
    pub(super) async fn release(&self, name: &str, version: u32) {
        let conn = self.held().remove(&(name.to_owned(), version));
        if let Some(conn) = conn
            && let Err(e) = conn.close().await
        {
            // The session ends anyway when the server sees the socket close.
            tracing::debug!(key = name, version, error = %e, "creation lock: close failed");
        }
    }

    /// The pending versions nobody is creating, each now locked by this replica until it is
    /// confirmed ([`Creating::release`] from `set_version_state`).
    pub(super) async fn claim_pending(
        &self,
        pool: &PgPool,
        candidates: Vec<(String, u32)>,
    ) -> Result<Vec<(String, u32)>, StoreError> {
        let mut out = Vec::with_capacity(candidates.len());
        for (name, version) in candidates {
            let Some(mut conn) = Self::lock(pool, &name, version).await? else {
                tracing::info!(
                    key = name,
                    version,
                    "pending version is being created by another replica: not recovering it"
                );
                continue;
            };
            // Its creator may have confirmed or dropped it between the listing and the lock.
            let still: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM key_versions v JOIN keys k ON k.name = v.key_name \
                 WHERE v.key_name = $1 AND v.version = $2 AND v.state = 'PENDING_CREATE' \
                 AND k.state IN ('ENABLED', 'DISABLED')",
            )
            .bind(&name)
            .bind(i64::from(version))
            .fetch_optional(&mut conn)
            .await?;
            if still.is_some() {
                self.keep(&name, version, conn);
                out.push((name, version));
            } else {
                let _ = conn.close().await;
            }
        }
        Ok(out)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), PgConnection>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The second lock key of `name` version `version` (a collision only makes one creation wait
/// for, or one recovery skip, an unrelated version).
fn lock_key(name: &str, version: u32) -> i32 {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([0])
        .chain_update(version.to_be_bytes())
        .finalize();
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_differ_by_key_and_version() {
        assert_ne!(lock_key("a", 1), lock_key("a", 2));
        assert_ne!(lock_key("a", 1), lock_key("b", 1));
        // The separator keeps "a1"+v from meeting "a"+"1"-prefixed versions.
        assert_ne!(lock_key("a\u{1}", 1), lock_key("a", 1));
        assert_eq!(lock_key("a", 1), lock_key("a", 1));
    }
}
