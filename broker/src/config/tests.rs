//! Unit tests for broker config parsing, validation and `check_config`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hsm_config::Inventory;

use super::{BrokerConfig, ConfigError, JwtAlgorithm, StoreConfig};

pub(super) const FULL: &str = r#"
hsm_inventory = "hsm.toml"
[server]
listen = "127.0.0.1:7443"
tls_cert = "tls/server.pem"
tls_key = "tls/server-key.pem"
[store]
sqlite_path = "catalog.db"
[residency]
allowed_jurisdictions = ["EU"]
[keys]
default_lease_ttl = "15m"
max_lease_ttl = "1h"
rotate_after_wraps = 1073741824
[[identity.jwt_issuers]]
issuer = "https://k8s.example.eu"
audiences = ["keybroker"]
jwks_file = "jwks.json"
algorithms = ["EdDSA", "ES256"]
max_token_lifetime = "1h"
leeway = "30s"
"#;

const MINIMAL: &str = r#"
hsm_inventory = "/etc/keybroker/hsm.toml"
[server]
listen = "[::1]:7443"
tls_cert = "/etc/keybroker/cert.pem"
tls_key = "/etc/keybroker/key.pem"
[store]
sqlite_path = "/var/lib/keybroker/catalog.db"
[[identity.jwt_issuers]]
issuer = "https://issuer.example.eu"
audiences = ["keybroker"]
jwks_file = "jwks.json"
algorithms = ["RS256"]
"#;

pub(super) fn inventory(jurisdictions: &[&str], pin: &str, module: &str) -> String {
    jurisdictions
        .iter()
        .enumerate()
        .map(|(i, j)| {
            format!(
                "[[hsm]]\nid = \"hsm-{i}\"\nmodule = \"{module}\"\ntoken_label = \"kb\"\n\
                 pin = {pin}\njurisdiction = \"{j}\"\nregion = \"r\"\nprovider = \"p\"\n\
                 certification = \"none\"\n"
            )
        })
        .collect()
}

pub(super) fn eu() -> Inventory {
    Inventory::parse(
        &inventory(&["EU"], "{ env = \"PIN\" }", "/m.so"),
        Path::new("hsm.toml"),
    )
    .unwrap()
}

pub(super) fn parse(text: &str) -> Result<BrokerConfig, ConfigError> {
    BrokerConfig::parse_with_inventory(text, Path::new("/etc/keybroker/broker.toml"), eu())
}

pub(super) fn err(text: &str) -> String {
    match BrokerConfig::parse_with_inventory(text, Path::new("broker.toml"), eu()) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

pub(super) fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from}");
    text.replacen(from, to, 1)
}

#[test]
fn full_example_parses_and_resolves_paths_against_the_config_dir() {
    let c = parse(FULL).unwrap();
    let dir = Path::new("/etc/keybroker");
    assert_eq!(c.path, dir.join("broker.toml"));
    assert_eq!(c.hsm_inventory, dir.join("hsm.toml"));
    assert_eq!(c.server.tls_cert, dir.join("tls/server.pem"));
    assert_eq!(c.server.tls_key, dir.join("tls/server-key.pem"));
    assert_eq!(
        c.store,
        StoreConfig::Sqlite {
            path: dir.join("catalog.db")
        }
    );
    assert_eq!(c.audit.dir, dir.join("audit"));
    let iss = &c.identity.jwt_issuers[0];
    assert_eq!(iss.jwks, super::JwksSource::File(dir.join("jwks.json")));
    assert_eq!(
        iss.algorithms,
        vec![JwtAlgorithm::EdDsa, JwtAlgorithm::Es256]
    );
    assert_eq!(c.server.listen.port(), 7443);
    assert_eq!(c.inventory.hsms.len(), 1);
}

#[test]
fn omitted_sections_take_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.keys.default_lease_ttl, Duration::from_secs(900));
    assert_eq!(c.keys.max_lease_ttl, Duration::from_secs(3600));
    assert_eq!(c.keys.rotate_after_wraps, 1 << 30);
    assert!(c.residency.allowed_jurisdictions.iter().eq(["EU"]));
    assert_eq!(c.identity.jwt_issuers[0].leeway, Duration::from_secs(30));
    assert_eq!(
        c.identity.jwt_issuers[0].max_token_lifetime,
        Duration::from_secs(3600)
    );
    assert_eq!(c.hsm_inventory, PathBuf::from("/etc/keybroker/hsm.toml"));
}

#[test]
fn replica_id_is_optional_and_a_bad_one_names_the_field() {
    assert_eq!(parse(MINIMAL).unwrap().server.replica_id, None);
    let with = |id: &str| {
        replace(
            FULL,
            "[server]\n",
            &format!("[server]\nreplica_id = {id:?}\n"),
        )
    };
    let c = parse(&with("keybroker-1")).unwrap();
    assert_eq!(c.server.replica_id.as_deref(), Some("keybroker-1"));
    let e = err(&with("a b"));
    assert!(e.contains("server.replica_id"), "{e}");
}

#[test]
fn unknown_fields_are_rejected() {
    for (at, extra) in [
        ("[server]\n", "tls_ca = \"x\"\n"),
        ("[keys]\n", "default_ttl = \"1m\"\n"),
        ("leeway = \"30s\"\n", "jwks_uri = \"https://x\"\n"),
    ] {
        let e = err(&replace(FULL, at, &format!("{at}{extra}")));
        assert!(
            e.starts_with("broker.toml:") && e.contains("unknown field"),
            "{e}"
        );
    }
    let e = err(&format!("anonymous = true\n{FULL}"));
    assert!(e.contains("unknown field `anonymous`"), "{e}");
}

#[test]
fn missing_jwt_issuers_is_rejected_no_anonymous_mode() {
    let text = FULL.split("[[identity.jwt_issuers]]").next().unwrap();
    let e = err(text);
    assert!(
        e.starts_with("broker.toml: identity.jwt_issuers: at least one"),
        "{e}"
    );
    assert!(e.contains("no anonymous mode"), "{e}");
}

#[test]
fn unsafe_or_unknown_jwt_algorithms_are_rejected() {
    for (alg, why) in [
        ("none", "unsigned"),
        ("HS256", "HMAC"),
        ("hs512", "HMAC"),
        ("RS512", "not supported"),
    ] {
        let e = err(&replace(
            FULL,
            "\"EdDSA\", \"ES256\"",
            &format!("\"ES256\", \"{alg}\""),
        ));
        assert!(e.contains("identity.jwt_issuers[0].algorithms[1]"), "{e}");
        assert!(e.contains(why), "{alg}: {e}");
    }
    let e = err(&replace(FULL, "[\"EdDSA\", \"ES256\"]", "[]"));
    assert!(e.contains("algorithms: must list at least one"), "{e}");
}

#[test]
fn max_lease_ttl_must_not_be_below_default() {
    let e = err(&replace(
        FULL,
        "max_lease_ttl = \"1h\"",
        "max_lease_ttl = \"10m\"",
    ));
    assert_eq!(
        e,
        "broker.toml: keys.max_lease_ttl: must be >= keys.default_lease_ttl (15m)"
    );
}

#[test]
fn durations_are_parsed_and_range_checked() {
    let e = err(&replace(FULL, "\"15m\"", "\"15 minutes-ish\""));
    assert!(
        e.contains("keys.default_lease_ttl: \"15 minutes-ish\" is not a duration"),
        "{e}"
    );
    let e = err(&replace(FULL, "\"15m\"", "\"0s\""));
    assert!(
        e.contains("keys.default_lease_ttl: 0s is out of range 1s..=1day"),
        "{e}"
    );
    let e = err(&replace(FULL, "leeway = \"30s\"", "leeway = \"31s\""));
    assert!(
        e.contains("identity.jwt_issuers[0].leeway: 31s is out of range 0s..=30s"),
        "{e}"
    );
    assert!(parse(&replace(FULL, "leeway = \"30s\"", "leeway = \"0s\"")).is_ok());
    let e = err(&replace(
        FULL,
        "max_token_lifetime = \"1h\"",
        "max_token_lifetime = \"2days\"",
    ));
    assert!(
        e.contains("max_token_lifetime: 2days is out of range"),
        "{e}"
    );
}

#[test]
fn rotate_after_wraps_is_capped_at_two_to_the_32() {
    for (v, ok) in [
        (0_i64, false),
        (1, true),
        (1 << 32, true),
        ((1 << 32) + 1, false),
        (-5, false),
    ] {
        let r = parse(&replace(FULL, "1073741824", &v.to_string()));
        assert_eq!(r.is_ok(), ok, "{v}: {r:?}");
    }
    let e = err(&replace(FULL, "1073741824", "0"));
    assert!(
        e.contains("keys.rotate_after_wraps: must be in 1..=4294967296"),
        "{e}"
    );
}

#[test]
fn allowed_jurisdictions_must_be_valid_codes() {
    let e = err(&replace(FULL, "[\"EU\"]", "[\"EU\", \"europe\"]"));
    assert!(
        e.contains("residency.allowed_jurisdictions[1]: \"europe\" is not a jurisdiction"),
        "{e}"
    );
    let e = err(&replace(FULL, "[\"EU\"]", "[]"));
    assert!(
        e.contains("residency.allowed_jurisdictions: must list at least one"),
        "{e}"
    );
}

#[test]
fn some_hsm_must_be_in_an_allowed_jurisdiction() {
    let inv = Inventory::parse(
        &inventory(&["US", "CH"], "{ env = \"P\" }", "/m.so"),
        Path::new("hsm.toml"),
    )
    .unwrap();
    let e = BrokerConfig::parse_with_inventory(FULL, Path::new("broker.toml"), inv.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("broker.toml: residency.allowed_jurisdictions: no HSM in"),
        "{e}"
    );
    assert!(e.contains("allowed: EU; inventory has: CH, US"), "{e}");
    let ch = replace(FULL, "[\"EU\"]", "[\"EU\", \"CH\"]");
    assert!(BrokerConfig::parse_with_inventory(&ch, Path::new("broker.toml"), inv).is_ok());
}

#[test]
fn server_listen_must_be_a_socket_address() {
    let e = err(&replace(FULL, "127.0.0.1:7443", "localhost:7443"));
    assert!(
        e.contains("server.listen: \"localhost:7443\" is not an IP address and port"),
        "{e}"
    );
}

#[test]
fn issuer_fields_are_checked() {
    let e = err(&replace(FULL, "\"https://k8s.example.eu\"", "\" \""));
    assert!(
        e.contains("identity.jwt_issuers[0].issuer: must not be empty"),
        "{e}"
    );
    let e = err(&replace(FULL, "[\"keybroker\"]", "[]"));
    assert!(
        e.contains("identity.jwt_issuers[0].audiences: must list at least one"),
        "{e}"
    );
    let e = err(&replace(FULL, "[\"keybroker\"]", "[\"keybroker\", \"\"]"));
    assert!(
        e.contains("identity.jwt_issuers[0].audiences[1]: must not be empty"),
        "{e}"
    );
    let issuer = &FULL[FULL.find("[[identity.jwt_issuers]]").unwrap()..];
    let e = err(&format!("{FULL}{issuer}"));
    assert!(
        e.contains(
            "identity.jwt_issuers[1].issuer: \"https://k8s.example.eu\" is already configured"
        ),
        "{e}"
    );
    let e = err(&replace(FULL, "\"jwks.json\"", "\"\""));
    assert!(
        e.contains("identity.jwt_issuers[0].jwks_file: must not be empty"),
        "{e}"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let e = err(&replace(
        FULL,
        "rotate_after_wraps = 1073741824",
        "rotate_after_wraps = \"lots\"",
    ));
    assert!(e.starts_with("broker.toml:14:"), "{e}");
    let e = err("[server]\nlisten = \"127.0.0.1:1\"\n");
    assert!(e.contains("missing field"), "{e}");
}

#[test]
fn issuer_cluster_facts_and_job_claim_are_parsed_and_checked() {
    let facts = "leeway = \"30s\"\njob_claim = \"job\"\ncluster = \"train-a\"\n\
                 region = \"eu-west-1\"\njurisdiction = \"EU\"\n";
    let c = parse(&replace(FULL, "leeway = \"30s\"\n", facts)).unwrap();
    let i = &c.identity.jwt_issuers[0];
    assert_eq!(i.job_claim.as_deref(), Some("job"));
    assert_eq!(i.cluster.as_deref(), Some("train-a"));
    assert_eq!(i.region.as_deref(), Some("eu-west-1"));
    assert_eq!(i.jurisdiction.as_deref(), Some("EU"));
    let e = err(&replace(
        FULL,
        "leeway = \"30s\"\n",
        "job_claim = \"sub\"\n",
    ));
    assert!(
        e.contains("identity.jwt_issuers[0].job_claim: \"sub\" is a registered claim"),
        "{e}"
    );
    let e = err(&replace(
        FULL,
        "leeway = \"30s\"\n",
        "jurisdiction = \"eu\"\n",
    ));
    assert!(
        e.contains("identity.jwt_issuers[0].jurisdiction: \"eu\" is not a jurisdiction code"),
        "{e}"
    );
    let e = err(&replace(FULL, "leeway = \"30s\"\n", "region = \" \"\n"));
    assert!(
        e.contains("identity.jwt_issuers[0].region: must be 1 to 128 printable"),
        "{e}"
    );
}

#[test]
fn caller_region_rule_needs_valid_patterns() {
    let strict = "allowed_jurisdictions = [\"EU\"]\nrequire_caller_region = true\n\
                  allowed_regions = [\"eu-*\", \"ch-zurich-1\"]";
    let c = parse(&replace(FULL, "allowed_jurisdictions = [\"EU\"]", strict)).unwrap();
    let r = &c.residency;
    assert!(r.require_caller_region);
    assert!(r.region_allowed("eu-west-1") && r.region_allowed("ch-zurich-1"));
    assert!(!r.region_allowed("us-east-1") && !r.region_allowed("ch-zurich-10"));
    assert!(!r.region_allowed("") && !r.region_allowed("EU-west-1"));
    let e = err(&replace(
        FULL,
        "allowed_jurisdictions = [\"EU\"]",
        "require_caller_region = true",
    ));
    assert!(
        e.contains("residency.allowed_regions: must list at least one pattern"),
        "{e}"
    );
    let e = err(&replace(
        FULL,
        "allowed_jurisdictions = [\"EU\"]",
        "allowed_regions = [\"*\"]",
    ));
    assert!(
        e.contains("residency.allowed_regions[0]: \"*\" is not a region pattern"),
        "{e}"
    );
}

const TRANSIT: &str = r#"
[http]
listen = "127.0.0.1:8200"
[http.transit]
mount = "/seal/transit/"
[[http.transit.tokens]]
name = "openbao-prod"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
namespace = "openbao"
region = "eu-west-1"
jurisdiction = "EU"
"#;

#[test]
fn transit_section_parses_with_hashed_tokens_only() {
    let c = parse(&format!("{FULL}{TRANSIT}")).unwrap();
    let http = c.http.unwrap();
    assert_eq!(http.listen.port(), 8200);
    let t = http.transit.unwrap();
    assert_eq!(t.mount, "seal/transit");
    assert_eq!(t.tokens[0].name, "openbao-prod");
    assert_eq!(t.tokens[0].sha256[0], 0x9f);
    // Debug never prints the hash.
    assert!(!format!("{t:?}").contains("9f86d0"));
    assert!(parse(FULL).unwrap().http.is_none());
}

#[test]
fn transit_mistakes_name_the_field() {
    let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let cases = [
        ("127.0.0.1:8200", "localhost", "http.listen"),
        (
            "mount = \"/seal/transit/\"",
            "mount = \"a//b\"",
            "http.transit.mount",
        ),
        (sha, "test", "http.transit.tokens[0].sha256"),
        (sha, &sha[..60], "http.transit.tokens[0].sha256"),
        (
            "\"openbao-prod\"",
            "\"Bad Name\"",
            "http.transit.tokens[0].name",
        ),
        (
            "jurisdiction = \"EU\"",
            "jurisdiction = \"eu\"",
            "http.transit.tokens[0].jurisdiction",
        ),
        (
            "name = \"openbao-prod\"",
            "name = \"x\"\ntoken = \"plain\"",
            "unknown field",
        ),
        (
            "listen = \"127.0.0.1:8200\"",
            "listen = \"127.0.0.1:8200\"\ntls = false",
            "http.tls",
        ),
    ];
    for (from, to, field) in cases {
        let e = err(&format!("{FULL}{}", replace(TRANSIT, from, to)));
        assert!(e.contains(field), "{to}: {e}");
    }
    let no_tokens = "\n[http]\nlisten = \"127.0.0.1:8200\"\n[http.transit]\n";
    assert!(err(&format!("{FULL}{no_tokens}")).contains("http.transit.tokens"));
    let twice = format!("{TRANSIT}[[http.transit.tokens]]\nname = \"other\"\nsha256 = \"{sha}\"\n");
    assert!(err(&format!("{FULL}{twice}")).contains("configured twice"));
}
