//! Parsing of `[store]`: `kind = "sqlite"` (default, `sqlite_path`) or `kind = "postgres"`
//! (`url` without a password, or `url_file` holding the whole URL; `max_connections`).

use std::path::PathBuf;

use serde::Deserialize;

use super::Ctx;
use crate::config::{ConfigError, PgUrlSource, PostgresConfig, StoreConfig};

/// Default size of each replica's PostgreSQL connection pool.
const DEFAULT_MAX_CONNECTIONS: u32 = 16;
/// Largest pool one replica may ask for (PostgreSQL's own default limit is 100 in all).
const MAX_MAX_CONNECTIONS: u32 = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    kind: Option<String>,
    sqlite_path: Option<PathBuf>,
    url: Option<String>,
    url_file: Option<PathBuf>,
    max_connections: Option<u32>,
}

pub(super) fn store(cx: &Ctx<'_>, raw: RawStore) -> Result<StoreConfig, ConfigError> {
    match raw.kind.as_deref().unwrap_or("sqlite") {
        "sqlite" => {
            for (set, field) in [
                (raw.url.is_some(), "store.url"),
                (raw.url_file.is_some(), "store.url_file"),
                (raw.max_connections.is_some(), "store.max_connections"),
            ] {
                if set {
                    return Err(cx.invalid(field, "only allowed with kind = \"postgres\""));
                }
            }
            let path = raw
                .sqlite_path
                .ok_or_else(|| cx.invalid("store.sqlite_path", "missing (kind = \"sqlite\")"))?;
            Ok(StoreConfig::Sqlite {
                path: cx.resolve("store.sqlite_path", path)?,
            })
        }
        "postgres" => {
            if raw.sqlite_path.is_some() {
                return Err(cx.invalid("store.sqlite_path", "only allowed with kind = \"sqlite\""));
            }
            let url = match (raw.url, raw.url_file) {
                (Some(url), None) => PgUrlSource::Inline(inline_url(cx, &url)?),
                (None, Some(file)) => PgUrlSource::File(cx.resolve("store.url_file", file)?),
                (Some(_), Some(_)) => {
                    return Err(
                        cx.invalid("store.url", "set store.url or store.url_file, not both")
                    );
                }
                (None, None) => {
                    return Err(cx.invalid(
                        "store.url",
                        "missing: kind = \"postgres\" needs store.url or store.url_file",
                    ));
                }
            };
            let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
            if !(1..=MAX_MAX_CONNECTIONS).contains(&max_connections) {
                return Err(cx.invalid(
                    "store.max_connections",
                    format!("{max_connections} is not in 1..={MAX_MAX_CONNECTIONS}"),
                ));
            }
            Ok(StoreConfig::Postgres(PostgresConfig {
                url,
                max_connections,
            }))
        }
        other => Err(cx.invalid(
            "store.kind",
            format!("{other:?} is not \"sqlite\" or \"postgres\""),
        )),
    }
}

/// A URL written in the config text must not carry a password (secrets come from files or the
/// environment: `store.url_file`, `PGPASSWORD`, `~/.pgpass`). The error never repeats the URL.
fn inline_url(cx: &Ctx<'_>, text: &str) -> Result<String, ConfigError> {
    let parsed = url::Url::parse(text)
        .map_err(|e| cx.invalid("store.url", format!("not a postgres:// URL: {e}")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(cx.invalid(
            "store.url",
            format!("scheme {:?} is not postgres or postgresql", parsed.scheme()),
        ));
    }
    if parsed.password().is_some() || parsed.query_pairs().any(|(k, _)| k == "password") {
        return Err(cx.invalid(
            "store.url",
            "must not contain a password; put the whole URL in store.url_file, or use \
             PGPASSWORD or ~/.pgpass",
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn parse(toml_text: &str) -> Result<StoreConfig, String> {
        let raw: RawStore = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let cx = Ctx {
            path: std::path::Path::new("/etc/keybroker/broker.toml"),
            base: PathBuf::from("/etc/keybroker"),
        };
        store(&cx, raw).map_err(|e| e.to_string())
    }

    #[test]
    fn sqlite_is_the_default_kind() {
        assert_eq!(
            parse("sqlite_path = \"catalog.db\"").unwrap(),
            StoreConfig::Sqlite {
                path: PathBuf::from("/etc/keybroker/catalog.db")
            }
        );
    }

    #[test]
    fn postgres_takes_a_url_or_a_url_file() {
        let c =
            parse("kind = \"postgres\"\nurl = \"postgres://kb@db.internal/keybroker\"").unwrap();
        let StoreConfig::Postgres(pg) = c else {
            panic!("{c:?}")
        };
        assert_eq!(pg.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(matches!(pg.url, PgUrlSource::Inline(_)));
        let c = parse("kind = \"postgres\"\nurl_file = \"pg-url\"\nmax_connections = 4").unwrap();
        assert_eq!(
            c,
            StoreConfig::Postgres(PostgresConfig {
                url: PgUrlSource::File(PathBuf::from("/etc/keybroker/pg-url")),
                max_connections: 4,
            })
        );
    }

    #[test]
    fn an_inline_password_is_refused_without_echoing_it() {
        for url in [
            "postgres://kb:hunter2-secret@db/keybroker",
            "postgres://kb@db/keybroker?password=hunter2-secret",
        ] {
            let e = parse(&format!("kind = \"postgres\"\nurl = \"{url}\"")).unwrap_err();
            assert!(e.contains("store.url") && e.contains("password"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn mismatched_fields_name_the_field() {
        for (text, field) in [
            ("kind = \"postgres\"", "store.url"),
            (
                "kind = \"postgres\"\nurl = \"postgres://a@b/c\"\nurl_file = \"f\"",
                "store.url",
            ),
            ("kind = \"postgres\"\nurl = \"mysql://a@b/c\"", "store.url"),
            (
                "kind = \"postgres\"\nurl = \"postgres://a@b/c\"\nsqlite_path = \"x\"",
                "store.sqlite_path",
            ),
            (
                "kind = \"postgres\"\nurl = \"postgres://a@b/c\"\nmax_connections = 0",
                "store.max_connections",
            ),
            (
                "sqlite_path = \"x\"\nurl = \"postgres://a@b/c\"",
                "store.url",
            ),
            ("kind = \"sqlite\"", "store.sqlite_path"),
            ("kind = \"oracle\"", "store.kind"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(field), "{text}: {e}");
        }
    }
}
