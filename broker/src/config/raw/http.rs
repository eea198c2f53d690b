//! Parsing of `[http]` and `[http.transit]` (types in `config/http.rs`).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use hsm_config::is_valid_jurisdiction;
use serde::Deserialize;

use super::Ctx;
use crate::config::{ConfigError, HttpConfig, TransitAuth, TransitConfig, TransitToken};
use crate::identity::spiffe::parse_spiffe_id;

/// Most tokens one transit endpoint accepts (one per Vault/OpenBao cluster is the norm).
const MAX_TOKENS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    listen: String,
    #[serde(default = "yes")]
    tls: bool,
    transit: Option<RawTransit>,
    xks: Option<super::xks::RawXks>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransit {
    #[serde(default = "default_mount")]
    mount: String,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    tokens: Vec<RawToken>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawAuth {
    #[default]
    Token,
    Mtls,
    Both,
}

fn yes() -> bool {
    true
}

fn default_mount() -> String {
    "transit".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawToken {
    name: String,
    sha256: String,
    namespace: Option<String>,
    cluster: Option<String>,
    region: Option<String>,
    jurisdiction: Option<String>,
    spiffe_id: Option<String>,
}

pub(super) fn http(cx: &Ctx<'_>, raw: Option<RawHttp>) -> Result<Option<HttpConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let listen: SocketAddr = raw.listen.parse().map_err(|_| {
        cx.invalid(
            "http.listen",
            format!(
                "{:?} is not an IP address and port, e.g. \"127.0.0.1:8200\"",
                raw.listen
            ),
        )
    })?;
    let transit = raw.transit.map(|t| transit(cx, t)).transpose()?;
    if transit.is_some() && !raw.tls {
        return Err(cx.invalid(
            "http.tls",
            "the transit endpoint carries seal keys and tokens: it needs tls = true",
        ));
    }
    let xks = raw.xks.map(|x| super::xks::xks(cx, x)).transpose()?;
    if xks.as_ref().is_some_and(|x| x.listen.is_none()) && !raw.tls {
        return Err(cx.invalid(
            "http.tls",
            "the XKS proxy API carries key material and SigV4 requests: it needs tls = true \
             (or an https listener of its own: http.xks.listen)",
        ));
    }
    Ok(Some(HttpConfig {
        listen,
        tls: raw.tls,
        transit,
        xks,
    }))
}

fn transit(cx: &Ctx<'_>, raw: RawTransit) -> Result<TransitConfig, ConfigError> {
    let mount = raw.mount.trim_matches('/');
    if mount.is_empty()
        || mount.len() > 128
        || mount.split('/').any(|seg| {
            seg.is_empty()
                || !seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        })
    {
        return Err(cx.invalid(
            "http.transit.mount",
            format!("{:?} is not a mount path, e.g. \"transit\"", raw.mount),
        ));
    }
    let auth = match raw.auth {
        RawAuth::Token => TransitAuth::Token,
        RawAuth::Mtls => TransitAuth::Mtls,
        RawAuth::Both => TransitAuth::Both,
    };
    if auth == TransitAuth::Mtls && !raw.tokens.is_empty() {
        return Err(cx.invalid(
            "http.transit.tokens",
            "auth = \"mtls\" takes the principal from the client certificate: remove the \
             tokens, or use auth = \"both\"",
        ));
    }
    if auth != TransitAuth::Mtls && raw.tokens.is_empty() {
        return Err(cx.invalid(
            "http.transit.tokens",
            "at least one [[http.transit.tokens]] is required: the endpoint has no anonymous mode",
        ));
    }
    if raw.tokens.len() > MAX_TOKENS {
        return Err(cx.invalid(
            "http.transit.tokens",
            format!("at most {MAX_TOKENS} tokens"),
        ));
    }
    let mut names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    let mut tokens = Vec::with_capacity(raw.tokens.len());
    for (i, t) in raw.tokens.into_iter().enumerate() {
        let field = |f: &str| format!("http.transit.tokens[{i}].{f}");
        if t.name.is_empty()
            || t.name.len() > 64
            || !t
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(cx.invalid(
                field("name"),
                format!("{:?}: use 1-64 of [a-z0-9_-]", t.name),
            ));
        }
        if !names.insert(t.name.clone()) {
            return Err(cx.invalid(field("name"), format!("{:?} is used twice", t.name)));
        }
        let sha256: [u8; 32] = hex::decode(&t.sha256)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                cx.invalid(
                    field("sha256"),
                    "must be the 64 hex digits of sha256(token) (e.g. `printf %s \"$TOKEN\" | \
                     sha256sum`), never the token itself",
                )
            })?;
        if !hashes.insert(sha256) {
            return Err(cx.invalid(field("sha256"), "the same token is configured twice"));
        }
        if let Some(j) = &t.jurisdiction
            && !is_valid_jurisdiction(j)
        {
            return Err(cx.invalid(
                field("jurisdiction"),
                format!("{j:?} is not a jurisdiction code: expected upper case like EU"),
            ));
        }
        if let Some(id) = &t.spiffe_id {
            if auth != TransitAuth::Both {
                return Err(cx.invalid(
                    field("spiffe_id"),
                    "only applies with http.transit.auth = \"both\"",
                ));
            }
            if id.len() > 2048 || parse_spiffe_id(id).is_none() {
                return Err(cx.invalid(
                    field("spiffe_id"),
                    format!("{id:?} is not a SPIFFE ID, e.g. \"spiffe://eu1.example/ns/bao\""),
                ));
            }
        }
        tokens.push(TransitToken {
            name: t.name,
            sha256,
            namespace: t.namespace,
            cluster: t.cluster,
            region: t.region,
            jurisdiction: t.jurisdiction,
            spiffe_id: t.spiffe_id,
        });
    }
    Ok(TransitConfig {
        mount: mount.to_owned(),
        auth,
        tokens,
    })
}
