//! `docs/configuration.md` documents every field of `broker.toml`.
//!
//! The field names come from the serde structs themselves, not from a hand-kept list: each
//! struct is deserialized from a table holding one unknown key, and `deny_unknown_fields`
//! answers with the complete list of the fields it expects ("unknown field `…`, expected one
//! of `a`, `b`"). So a field added to a struct is seen here at once; only a new *struct* (a
//! new section or sub-table) must be added to [`sections`], and
//! `every_table_field_is_a_listed_section` fails until it is.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code")]

use serde::de::DeserializeOwned;

use super::attestation::{RawAttestation, RawVerifier};
use super::http::{RawHttp, RawToken, RawTransit};
use super::identity::{RawIdentity, RawIssuer};
use super::log::RawLog;
use super::mtls::RawTrustDomain;
use super::xks::{RawXks, RawXksCredential, RawXksMtls, RawXksStore};
use super::{RawAudit, RawConfig, RawKeys, RawPolicy, RawResidency, RawServer, RawStore};

const PROBE: &str = "zz_not_a_field";

/// The fields `T` accepts, as its `deny_unknown_fields` error lists them.
fn fields<T: DeserializeOwned>() -> Vec<String> {
    let Err(e) = toml::from_str::<T>(&format!("{PROBE} = 0")) else {
        panic!("a probe key was accepted");
    };
    let message = e.message().to_owned();
    let Some((_, expected)) = message.split_once("expected") else {
        panic!("not an unknown-field error: {message}");
    };
    let names: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!names.is_empty(), "{message}");
    names
}

/// Every config struct with its path in `broker.toml` ("" is the top level).
fn sections() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("", fields::<RawConfig>()),
        ("server", fields::<RawServer>()),
        ("store", fields::<RawStore>()),
        ("residency", fields::<RawResidency>()),
        ("keys", fields::<RawKeys>()),
        ("identity", fields::<RawIdentity>()),
        ("identity.jwt_issuers", fields::<RawIssuer>()),
        ("identity.trust_domains", fields::<RawTrustDomain>()),
        ("audit", fields::<RawAudit>()),
        ("policy", fields::<RawPolicy>()),
        ("http", fields::<RawHttp>()),
        ("http.transit", fields::<RawTransit>()),
        ("http.transit.tokens", fields::<RawToken>()),
        ("http.xks", fields::<RawXks>()),
        ("http.xks.stores", fields::<RawXksStore>()),
        ("http.xks.stores.credentials", fields::<RawXksCredential>()),
        ("http.xks.stores.mtls", fields::<RawXksMtls>()),
        ("log", fields::<RawLog>()),
        ("attestation", fields::<RawAttestation>()),
        ("attestation.verifiers", fields::<RawVerifier>()),
    ]
}

fn dotted(section: &str, field: &str) -> String {
    if section.is_empty() {
        field.to_owned()
    } else {
        format!("{section}.{field}")
    }
}

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
    std::fs::read_to_string(path).unwrap()
}

/// The names `doc` has no row for.
fn undocumented(doc: &str) -> Vec<String> {
    sections()
        .into_iter()
        .flat_map(|(section, fields)| {
            fields
                .into_iter()
                .map(move |f| dotted(section, &f))
                .collect::<Vec<_>>()
        })
        .filter(|name| !doc.contains(&format!("| `{name}` |")))
        .collect()
}

#[test]
fn every_config_field_has_a_row_in_docs_configuration_md() {
    let missing = undocumented(&doc());
    assert!(
        missing.is_empty(),
        "docs/configuration.md has no `| `section.field` |` row for: {missing:?}"
    );
}

#[test]
fn the_check_fails_for_a_field_without_a_row() {
    let doc = doc().replace("| `log.level` |", "| log level |");
    assert_eq!(undocumented(&doc), ["log.level"]);
}

#[test]
fn the_probe_lists_every_field_of_a_struct() {
    assert_eq!(
        fields::<RawServer>(),
        ["listen", "tls_cert", "tls_key", "replica_id"]
    );
    assert_eq!(fields::<RawPolicy>(), ["file"]);
}

/// A field that takes a table is itself a section: probing it inside its parent answers with
/// an unknown-field error for the probe (a scalar field answers a type error instead).
#[test]
fn every_table_field_is_a_listed_section() {
    let listed: Vec<&str> = sections().iter().map(|(s, _)| *s).collect();
    for (section, fields) in sections() {
        for field in fields {
            let name = dotted(section, &field);
            let probe = format!("{PROBE} = 0");
            let mut toml_text = String::new();
            // Build the parent path as nested inline tables, ending in the probed field.
            let path: Vec<&str> = name.split('.').collect();
            toml_text.push_str(&path.join("."));
            toml_text.push_str(&format!(" = {{ {probe} }}"));
            let e = toml::from_str::<RawConfig>(&toml_text).err().unwrap();
            let says_table = e.message().contains(&format!("unknown field `{PROBE}`"));
            let array = toml::from_str::<RawConfig>(&format!("[[{}]]\n{probe}", path.join(".")))
                .err()
                .is_some_and(|e| e.message().contains(&format!("unknown field `{PROBE}`")));
            if says_table || array {
                assert!(
                    listed.contains(&name.as_str()),
                    "`{name}` is a table: add its struct to sections()"
                );
            }
        }
    }
}
