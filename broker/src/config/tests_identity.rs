//! Config tests for `[identity]`: mode, JWKS URLs and the mTLS fields.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use super::tests::{FULL, err, parse, replace};
use super::{IdentityMode, JwksSource};

const JWKS: &str = "jwks_file = \"jwks.json\"";

const MTLS: &str = r#"
[identity]
mode = "mtls"
client_ca_file = "spire-bundle.pem"
trust_domains = [
  { domain = "prod.eu.example", cluster = "train-a", region = "eu-west-1", jurisdiction = "EU" },
]
"#;

#[test]
fn jwks_url_is_an_alternative_to_jwks_file() {
    let text = replace(
        FULL,
        JWKS,
        "jwks_url = \"https://k8s.example.eu/openid/v1/jwks\"\njwks_ca_file = \"idp-ca.pem\"",
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.identity.jwt_issuers[0].jwks,
        JwksSource::Url {
            url: "https://k8s.example.eu/openid/v1/jwks".into(),
            ca_file: Some(Path::new("/etc/keybroker/idp-ca.pem").to_path_buf()),
        }
    );
    // Loopback http is allowed for tests and development.
    for ok in [
        "http://127.0.0.1:8080/jwks",
        "http://[::1]/jwks",
        "http://localhost/j",
    ] {
        parse(&replace(FULL, JWKS, &format!("jwks_url = \"{ok}\""))).unwrap();
    }
}

#[test]
fn jwks_source_errors_name_the_field() {
    let both = replace(
        FULL,
        JWKS,
        "jwks_file = \"a\"\njwks_url = \"https://a.eu/j\"",
    );
    let e = err(&both);
    assert!(
        e.contains("identity.jwt_issuers[0].jwks_url: set exactly one"),
        "{e}"
    );
    let neither = replace(FULL, JWKS, "");
    let e = err(&neither);
    assert!(
        e.contains("identity.jwt_issuers[0].jwks_file: set exactly one"),
        "{e}"
    );
    for (url, why) in [
        (
            "http://idp.example.eu/jwks",
            "plain http is allowed only to a loopback",
        ),
        (
            "ftp://idp.example.eu/jwks",
            "scheme \"ftp\" is not supported",
        ),
        (
            "https://user:pw@idp.example.eu/jwks",
            "must not carry credentials",
        ),
        ("not a url", "is not a URL"),
    ] {
        let e = err(&replace(FULL, JWKS, &format!("jwks_url = \"{url}\"")));
        assert!(e.contains("identity.jwt_issuers[0].jwks_url: "), "{e}");
        assert!(e.contains(why), "{e}");
    }
    let e = err(&replace(
        FULL,
        JWKS,
        "jwks_file = \"j\"\njwks_ca_file = \"ca.pem\"",
    ));
    assert!(
        e.contains("identity.jwt_issuers[0].jwks_ca_file: only applies"),
        "{e}"
    );
}

#[test]
fn mtls_mode_needs_a_ca_and_trust_domains_and_no_issuer() {
    let head = FULL.split("[[identity.jwt_issuers]]").next().unwrap();
    let c = parse(&format!("{head}{MTLS}")).unwrap();
    assert_eq!(c.identity.mode, IdentityMode::Mtls);
    let m = c.identity.mtls.unwrap();
    assert_eq!(
        m.client_ca_file,
        Path::new("/etc/keybroker/spire-bundle.pem")
    );
    assert_eq!(m.client_ca_poll_interval, Duration::from_secs(5));
    assert_eq!(m.trust_domains[0].domain, "prod.eu.example");
    assert_eq!(m.trust_domains[0].region.as_deref(), Some("eu-west-1"));
    // Default mode is jwt, with no mTLS.
    let c = parse(FULL).unwrap();
    assert_eq!(
        (c.identity.mode, c.identity.mtls),
        (IdentityMode::Jwt, None)
    );

    let cases = [
        (
            "mode = \"mtls\"",
            "mode = \"tls\"",
            "identity.mode: \"tls\" is not a mode",
        ),
        (
            "client_ca_file = \"spire-bundle.pem\"\n",
            "",
            "identity.client_ca_file: required",
        ),
        (
            "\"prod.eu.example\"",
            "\"spiffe://prod.eu.example\"",
            "identity.trust_domains[0].domain",
        ),
        (
            "\"prod.eu.example\"",
            "\"Prod.EU\"",
            "is not a SPIFFE trust domain",
        ),
        (
            "\"EU\" }",
            "\"eu\" }",
            "identity.trust_domains[0].jurisdiction",
        ),
        (
            "mode = \"mtls\"",
            "mode = \"both\"",
            "identity.jwt_issuers: at least one",
        ),
    ];
    for (from, to, want) in cases {
        let e = err(&format!("{head}{}", replace(MTLS, from, to)));
        assert!(e.contains(want), "{want}: {e}");
    }
    // mTLS fields without an mTLS mode are a mistake, not silently ignored.
    let e = err(&FULL.replace(
        "[[identity.jwt_issuers]]",
        "[identity]\nclient_ca_file = \"b.pem\"\n[[identity.jwt_issuers]]",
    ));
    assert!(e.contains("identity.client_ca_file: only applies"), "{e}");
    let e = err(&format!(
        "{head}[identity]\nmode = \"mtls\"\nclient_ca_file = \"b.pem\"\n"
    ));
    assert!(
        e.contains("identity.trust_domains: list at least one"),
        "{e}"
    );
}

const TRANSIT_MTLS: &str = r#"
[http]
listen = "127.0.0.1:8200"
[http.transit]
auth = "mtls"
"#;

const TRANSIT_TOKEN: &str = r#"
[[http.transit.tokens]]
name = "bao"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"#;

#[test]
fn transit_auth_by_certificate_needs_the_mtls_identity_settings() {
    use crate::config::TransitAuth;
    let head = FULL.split("[[identity.jwt_issuers]]").next().unwrap();
    let c = parse(&format!("{head}{MTLS}{TRANSIT_MTLS}")).unwrap();
    let t = c.http.unwrap().transit.unwrap();
    assert_eq!((t.auth, t.tokens.len()), (TransitAuth::Mtls, 0));

    // Without [identity.mtls] there is no CA to check certificates against.
    let e = err(&format!("{FULL}{TRANSIT_MTLS}"));
    assert!(e.contains("http.transit.auth: client certificates"), "{e}");
    // mtls takes the principal from the certificate: tokens would be ignored, so refused.
    let e = err(&format!("{head}{MTLS}{TRANSIT_MTLS}{TRANSIT_TOKEN}"));
    assert!(e.contains("http.transit.tokens: auth = \"mtls\""), "{e}");
    // both: tokens required, and a token may be bound to one SPIFFE ID.
    let both = TRANSIT_MTLS.replace("\"mtls\"", "\"both\"");
    let e = err(&format!("{head}{MTLS}{both}"));
    assert!(e.contains("http.transit.tokens: at least one"), "{e}");
    let bound = format!("{TRANSIT_TOKEN}spiffe_id = \"spiffe://prod.eu.example/ns/bao\"\n");
    let c = parse(&format!("{head}{MTLS}{both}{bound}")).unwrap();
    let t = c.http.unwrap().transit.unwrap();
    assert_eq!(t.auth, TransitAuth::Both);
    assert_eq!(
        t.tokens[0].spiffe_id.as_deref(),
        Some("spiffe://prod.eu.example/ns/bao")
    );
    let bad = bound.replace("spiffe://prod", "https://prod");
    let e = err(&format!("{head}{MTLS}{both}{bad}"));
    assert!(e.contains("http.transit.tokens[0].spiffe_id"), "{e}");
    // A binding only means something when a certificate is required.
    let token_mode = format!("{}{bound}", TRANSIT_MTLS.replace("auth = \"mtls\"\n", ""));
    let e = err(&format!("{head}{MTLS}{token_mode}"));
    assert!(
        e.contains("http.transit.tokens[0].spiffe_id: only applies"),
        "{e}"
    );
    let e = err(&format!(
        "{head}{MTLS}{}",
        TRANSIT_MTLS.replace("mtls\"", "cert\"")
    ));
    assert!(e.contains("unknown variant `cert`"), "{e}");
}
