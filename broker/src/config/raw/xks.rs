//! Parsing of `[http.xks]` and `[[http.xks.stores]]` (types in `config/http.rs`). The limits
//! are the XKS Proxy API specification's: URI path ≤ 128 characters of `[A-Za-z0-9/_-]`,
//! access key ids of 20-30 `A-Z2-7`, at most two credential sets per store.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::Ctx;
use crate::config::{ConfigError, XksConfig, XksCredentialConfig, XksMtlsConfig, XksStoreConfig};

/// Most key stores one broker serves.
const MAX_STORES: usize = 32;
/// Most credential sets of one store (the spec asks for two, for rotation).
const MAX_CREDENTIALS: usize = 2;
/// Longest `uri_prefix`: the spec's 128-character path less `/kms/xks/v1` and a slash.
const MAX_PREFIX: usize = 116;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXks {
    listen: Option<String>,
    #[serde(default = "yes")]
    reject_replays: bool,
    stores: Vec<RawXksStore>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXksStore {
    uri_prefix: String,
    region: String,
    namespace: Option<String>,
    #[serde(default = "all_keys")]
    keys: Vec<String>,
    credentials: Vec<RawXksCredential>,
    mtls: Option<RawXksMtls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXksMtls {
    ca_file: std::path::PathBuf,
    names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXksCredential {
    access_key_id: String,
    secret_file: std::path::PathBuf,
}

fn yes() -> bool {
    true
}

fn all_keys() -> Vec<String> {
    vec!["*".to_owned()]
}

pub(super) fn xks(cx: &Ctx<'_>, raw: RawXks) -> Result<XksConfig, ConfigError> {
    if raw.stores.is_empty() || raw.stores.len() > MAX_STORES {
        return Err(cx.invalid(
            "http.xks.stores",
            format!("1 to {MAX_STORES} [[http.xks.stores]] are required"),
        ));
    }
    let mut prefixes = BTreeSet::new();
    let mut key_ids = BTreeSet::new();
    let mut stores = Vec::with_capacity(raw.stores.len());
    for (i, s) in raw.stores.into_iter().enumerate() {
        let field = |f: &str| format!("http.xks.stores[{i}].{f}");
        let prefix = s.uri_prefix.trim_matches('/');
        if prefix.len() > MAX_PREFIX
            || prefix.split('/').any(|seg| {
                !prefix.is_empty()
                    && (seg.is_empty()
                        || !seg
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            })
        {
            return Err(cx.invalid(
                field("uri_prefix"),
                format!(
                    "{:?}: use at most {MAX_PREFIX} of [A-Za-z0-9/_-], e.g. \"keybroker/eu1\"",
                    s.uri_prefix
                ),
            ));
        }
        if !prefixes.insert(prefix.to_owned()) {
            return Err(cx.invalid(
                field("uri_prefix"),
                format!("{prefix:?} is used by two stores"),
            ));
        }
        if s.region.is_empty()
            || s.region.len() > 64
            || !s
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(cx.invalid(
                field("region"),
                format!("{:?} is not an AWS region, e.g. \"eu-central-1\"", s.region),
            ));
        }
        if s.keys.is_empty()
            || s.keys.iter().any(|k| {
                let name = k.strip_suffix('*').unwrap_or(k);
                name.contains('*') || (!name.is_empty() && name.contains('/'))
            })
        {
            return Err(cx.invalid(
                field("keys"),
                "list XKS key names, or prefixes ending in '*' (\"*\" = every XKS key); \
                 XKS key names have no '/'",
            ));
        }
        if s.credentials.is_empty() || s.credentials.len() > MAX_CREDENTIALS {
            return Err(cx.invalid(
                field("credentials"),
                format!(
                    "1 to {MAX_CREDENTIALS} credential sets (two while rotating KMS's credential)"
                ),
            ));
        }
        let mut credentials = Vec::with_capacity(s.credentials.len());
        for (j, c) in s.credentials.into_iter().enumerate() {
            let f = format!("http.xks.stores[{i}].credentials[{j}]");
            let id = &c.access_key_id;
            if !(20..=30).contains(&id.len())
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
            {
                return Err(cx.invalid(
                    format!("{f}.access_key_id"),
                    "20 to 30 characters of A-Z and 2-7 (XKS spec); e.g. \
                     `head -c 15 /dev/urandom | base32`",
                ));
            }
            if !key_ids.insert(id.clone()) {
                return Err(cx.invalid(
                    format!("{f}.access_key_id"),
                    "the same access key id is configured twice",
                ));
            }
            credentials.push(XksCredentialConfig {
                access_key_id: id.clone(),
                secret_file: cx.resolve(&format!("{f}.secret_file"), c.secret_file)?,
            });
        }
        let mtls = match s.mtls {
            None => None,
            Some(m) => {
                if m.names.is_empty()
                    || m.names.iter().any(|n| {
                        n.is_empty()
                            || n.len() > 253
                            || !n
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                    })
                {
                    return Err(cx.invalid(
                        field("mtls.names"),
                        "list the client certificate names to accept, e.g. \
                         [\"cks.kms.eu-central-1.amazonaws.com\"]",
                    ));
                }
                Some(XksMtlsConfig {
                    ca_file: cx.resolve(&field("mtls.ca_file"), m.ca_file)?,
                    names: m.names,
                })
            }
        };
        stores.push(XksStoreConfig {
            uri_prefix: prefix.to_owned(),
            region: s.region,
            namespace: s.namespace,
            keys: s.keys,
            credentials,
            mtls,
        });
    }
    let listen = raw
        .listen
        .map(|l| {
            l.parse().map_err(|_| {
                cx.invalid(
                    "http.xks.listen",
                    format!("{l:?} is not an IP address and port, e.g. \"0.0.0.0:443\""),
                )
            })
        })
        .transpose()?;
    if listen.is_none() && stores.iter().any(|s| s.mtls.is_some()) {
        return Err(cx.invalid(
            "http.xks.listen",
            "a store with mtls needs the XKS API on a listener of its own (http.xks.listen)",
        ));
    }
    Ok(XksConfig {
        listen,
        stores,
        reject_replays: raw.reject_replays,
    })
}
