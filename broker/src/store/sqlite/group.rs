//! The SQLite side of the gate group commit ([`crate::store::group`]): one `BEGIN IMMEDIATE`
//! transaction per batch on a pooled connection, one fsync at COMMIT.
//!
//! No savepoint per gate: a gate that closes has written nothing (its first statement found no
//! row to change), and once a gate's first statement opened, its second one runs on the same
//! snapshot under the same conditions, so it can only fail with a database error, which rolls
//! back the whole batch.

use async_trait::async_trait;
use sqlx::SqlitePool;
use sqlx::pool::PoolConnection;

use super::gate::release_in;
use crate::store::GateOutcome;
use crate::store::group::{Batch, OwnedGate};

/// Runs batches of gates on the catalog's pool.
pub(super) struct SqliteBatch(pub(super) SqlitePool);

async fn exec(
    conn: &mut PoolConnection<sqlx::Sqlite>,
    sql: &'static str,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut **conn).await.map(drop)
}

#[async_trait]
impl Batch for SqliteBatch {
    async fn run(&self, gates: &[OwnedGate]) -> Result<Vec<GateOutcome>, String> {
        let mut conn = self.0.acquire().await.map_err(|e| e.to_string())?;
        exec(&mut conn, "BEGIN IMMEDIATE")
            .await
            .map_err(|e| e.to_string())?;
        let mut outcomes = Vec::with_capacity(gates.len());
        for gate in gates {
            match release_in(&mut conn, &gate.gate()).await {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    // Best effort: the connection goes back to the pool without a transaction.
                    let _ignored = exec(&mut conn, "ROLLBACK").await;
                    return Err(e.to_string());
                }
            }
        }
        if let Err(e) = exec(&mut conn, "COMMIT").await {
            let _ignored = exec(&mut conn, "ROLLBACK").await;
            return Err(e.to_string());
        }
        Ok(outcomes)
    }
}
