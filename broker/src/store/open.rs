//! Opening the catalog the config names: SQLite (single node) or PostgreSQL (replicas).

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::PgConnectOptions;
use zeroize::Zeroizing;

use super::{CachedStore, PostgresStore, SqliteStore, Store, StoreError};
use crate::config::{PgUrlSource, StoreConfig};

/// An open catalog.
#[derive(Clone)]
pub struct Opened {
    /// The catalog.
    pub store: Arc<dyn Store>,
    /// The PostgreSQL pool, when the catalog is shared by replicas (the audit log is sequenced
    /// in the same database then).
    pub postgres: Option<sqlx::PgPool>,
}

/// Opens the catalog of `config`, applying migrations. Returns the config field an error is
/// about, for the start-up message.
///
/// # Errors
/// The database cannot be opened or reached, the URL file is unreadable, a migration fails.
pub async fn open(config: &StoreConfig) -> Result<Opened, (&'static str, StoreError)> {
    match config {
        StoreConfig::Sqlite { path } => SqliteStore::open(path)
            .await
            .map(|s| Opened {
                store: Arc::new(CachedStore::new(Arc::new(s))),
                postgres: None,
            })
            .map_err(|e| ("store.sqlite_path", e)),
        StoreConfig::Postgres(pg) => {
            let (field, options) = match &pg.url {
                PgUrlSource::Inline(url) => {
                    ("store.url", options(url).map_err(|e| ("store.url", e))?)
                }
                PgUrlSource::File(path) => {
                    let text =
                        std::fs::read_to_string(path)
                            .map(Zeroizing::new)
                            .map_err(|source| {
                                (
                                    "store.url_file",
                                    StoreError::UrlFile {
                                        path: path.clone(),
                                        source,
                                    },
                                )
                            })?;
                    (
                        "store.url_file",
                        options(text.trim()).map_err(|e| ("store.url_file", e))?,
                    )
                }
            };
            let store = PostgresStore::connect(options, pg.max_connections)
                .await
                .map_err(|e| (field, e))?;
            tracing::info!(max_connections = pg.max_connections, "catalog: PostgreSQL");
            Ok(Opened {
                postgres: Some(store.pool().clone()),
                store: Arc::new(store),
            })
        }
    }
}

fn options(url: &str) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(url).map_err(|_| StoreError::BadUrl)
}
