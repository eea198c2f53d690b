//! `keybrokerd check-config FILE`: everything `load` checks, plus the files the config refers
//! to — TLS material parses, JWKS files parse, PKCS#11 modules exist, PINs are readable.
//!
//! The report lists what was checked and never holds a secret (PINs are read and dropped).

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use super::{BrokerConfig, ConfigError, JwksSource};

/// One successful check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    /// What was checked, e.g. `server.tls_cert`.
    pub what: String,
    /// What was found, e.g. `/etc/keybroker/tls/server.pem: 2 certificates`.
    pub detail: String,
}

/// What `check-config` verified; [`fmt::Display`] prints one `ok` line per item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The validated configuration.
    pub config: BrokerConfig,
    /// The checks that passed, in order.
    pub items: Vec<CheckItem>,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            writeln!(f, "ok  {}: {}", item.what, item.detail)?;
        }
        write!(
            f,
            "{}: configuration OK ({} checks)",
            self.config.path.display(),
            self.items.len()
        )
    }
}

/// Loads and validates the config at `path`, then checks every file it refers to.
///
/// # Errors
/// The errors of [`BrokerConfig::load`], then [`ConfigError::Check`] for a TLS, JWKS or store
/// problem and [`ConfigError::HsmCheck`] for a missing module or unreadable PIN source; the
/// first failure stops the check.
pub fn check_config(path: &Path) -> Result<CheckReport, ConfigError> {
    let config = BrokerConfig::load(path)?;
    let mut items = Vec::new();
    let mut ok = |what: &str, detail: String| {
        items.push(CheckItem {
            what: what.to_owned(),
            detail,
        });
    };
    ok(
        "config",
        format!(
            "{}: valid ({} JWT issuer(s), {} HSM(s), allowed jurisdictions: {})",
            config.path.display(),
            config.identity.jwt_issuers.len(),
            config.inventory.hsms.len(),
            config
                .residency
                .allowed_jurisdictions
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let fail = |field: &str, file: &Path, problem: String| ConfigError::Check {
        path: path.to_path_buf(),
        field: field.to_owned(),
        file: file.to_path_buf(),
        problem,
    };
    let read = |field: &str, file: &Path| {
        std::fs::read(file)
            .map(Zeroizing::new)
            .map_err(|e| fail(field, file, format!("cannot read: {e}")))
    };

    let cert_path = &config.server.tls_cert;
    let certs = CertificateDer::pem_slice_iter(&read("server.tls_cert", cert_path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail("server.tls_cert", cert_path, format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(fail(
            "server.tls_cert",
            cert_path,
            "no CERTIFICATE block found".into(),
        ));
    }
    ok(
        "server.tls_cert",
        format!("{}: {} certificate(s)", cert_path.display(), certs.len()),
    );

    let key_path = &config.server.tls_key;
    // The pem error could quote key lines; say only what was expected.
    PrivateKeyDer::from_pem_slice(&read("server.tls_key", key_path)?).map_err(|_| {
        fail(
            "server.tls_key",
            key_path,
            "no PEM private key (PKCS#8, PKCS#1 or SEC1) found".into(),
        )
    })?;
    ok(
        "server.tls_key",
        format!("{}: private key parses", key_path.display()),
    );

    // Workload issuers and attestation verifiers: the same JWKS sources, the same checks.
    let issuers = config
        .identity
        .jwt_issuers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (
                format!("identity.jwt_issuers[{i}]"),
                &s.jwks,
                s.issuer.as_str(),
            )
        });
    let verifiers = config
        .attestation
        .iter()
        .flat_map(|a| a.verifiers.iter().enumerate())
        .map(|(i, v)| {
            (
                format!("attestation.verifiers[{i}]"),
                &v.jwks,
                v.name.as_str(),
            )
        });
    for (prefix, jwks, owner) in issuers.chain(verifiers) {
        match jwks {
            JwksSource::File(file) => {
                let field = format!("{prefix}.jwks_file");
                let count =
                    jwks_key_count(&read(&field, file)?).map_err(|p| fail(&field, file, p))?;
                ok(
                    &field,
                    format!("{}: {count} key(s) for {owner}", file.display()),
                );
            }
            // Offline check: the URL is not fetched, only its CA file is read.
            JwksSource::Url { url, ca_file } => {
                if let Some(file) = ca_file {
                    let field = format!("{prefix}.jwks_ca_file");
                    let n = pem_certs(&read(&field, file)?);
                    if n == 0 {
                        return Err(fail(&field, file, "no PEM certificate found".into()));
                    }
                    ok(&field, format!("{}: {n} certificate(s)", file.display()));
                }
                ok(
                    &format!("{prefix}.jwks_url"),
                    format!("{url} (fetched at start, not checked offline)"),
                );
            }
        }
    }
    if let Some(m) = &config.identity.mtls {
        let field = "identity.client_ca_file";
        let file = &m.client_ca_file;
        let n = pem_certs(&read(field, file)?);
        if n == 0 {
            return Err(fail(field, file, "no PEM certificate found".into()));
        }
        ok(field, format!("{}: {n} CA certificate(s)", file.display()));
    }

    match &config.store {
        super::StoreConfig::Sqlite { path: db } => {
            let dir = db
                .parent()
                .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
            if !dir.is_dir() {
                return Err(fail(
                    "store.sqlite_path",
                    db,
                    format!("directory {} does not exist", dir.display()),
                ));
            }
            ok(
                "store.sqlite_path",
                format!("{}: directory exists", db.display()),
            );
        }
        super::StoreConfig::Postgres(pg) => match &pg.url {
            super::PgUrlSource::File(file) => {
                // Read to prove it is readable; the contents (a password) are never shown.
                let text = read("store.url_file", file)?;
                if text.iter().all(u8::is_ascii_whitespace) {
                    return Err(fail("store.url_file", file, "empty".into()));
                }
                ok(
                    "store.url_file",
                    format!("{}: readable (not connected offline)", file.display()),
                );
            }
            super::PgUrlSource::Inline(_) => {
                ok(
                    "store.url",
                    "postgres URL (not connected offline)".to_owned(),
                );
            }
        },
    }

    for hsm in &config.inventory.hsms {
        let hsm_err = |source| ConfigError::HsmCheck {
            inventory: config.hsm_inventory.clone(),
            id: hsm.id.clone(),
            source: Box::new(source),
        };
        hsm.check_module_exists().map_err(hsm_err)?;
        let pin = hsm.pin.read().map_err(hsm_err)?;
        drop(pin);
        let pin_from = match &hsm.pin {
            hsm_config::PinSource::Env(var) => format!("env {var}"),
            hsm_config::PinSource::File(p) => format!("file {}", p.display()),
        };
        ok(
            &format!("hsm {}", hsm.id),
            format!(
                "module {} exists; PIN readable from {pin_from}; jurisdiction {}",
                hsm.module.display(),
                hsm.jurisdiction
            ),
        );
    }
    Ok(CheckReport { config, items })
}

/// Number of entries of the JWKS `keys` array; the problem as text otherwise.
fn jwks_key_count(bytes: &[u8]) -> Result<usize, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    match doc.get("keys") {
        Some(serde_json::Value::Array(keys)) if !keys.is_empty() => Ok(keys.len()),
        Some(serde_json::Value::Array(_)) => Err("the \"keys\" array is empty".into()),
        _ => Err("not a JWKS: no \"keys\" array".into()),
    }
}

/// How many PEM certificates `pem` holds (0 when it is not PEM at all).
fn pem_certs(pem: &[u8]) -> usize {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_or(0, |c| c.len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::path::PathBuf;

    use super::super::tests::{FULL, inventory};
    use super::*;

    /// A complete deployment in a temp dir: config, inventory, TLS, JWKS, module, PIN file.
    struct Deployment {
        dir: tempfile::TempDir,
    }

    impl Deployment {
        fn new(pin_mode: u32) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let p = |s: &str| dir.path().join(s);
            std::fs::create_dir(p("tls")).unwrap();
            let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            std::fs::write(p("tls/server.pem"), ck.cert.pem()).unwrap();
            std::fs::write(p("tls/server-key.pem"), ck.signing_key.serialize_pem()).unwrap();
            std::fs::write(
                p("jwks.json"),
                r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AA"}]}"#,
            )
            .unwrap();
            std::fs::write(p("libpkcs11.so"), b"").unwrap();
            std::fs::write(p("pin"), "1234-very-secret\n").unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p("pin"), std::fs::Permissions::from_mode(pin_mode))
                    .unwrap();
            }
            let pin = format!("{{ file = \"{}\" }}", p("pin").display());
            std::fs::write(
                p("hsm.toml"),
                inventory(&["EU"], &pin, &p("libpkcs11.so").display().to_string()),
            )
            .unwrap();
            std::fs::write(p("broker.toml"), FULL).unwrap();
            Self { dir }
        }

        fn path(&self, s: &str) -> PathBuf {
            self.dir.path().join(s)
        }
    }

    #[test]
    fn load_reads_the_inventory_relative_to_the_config() {
        let d = Deployment::new(0o600);
        let c = BrokerConfig::load(&d.path("broker.toml")).unwrap();
        assert_eq!(c.hsm_inventory, d.path("hsm.toml"));
        assert_eq!(c.inventory.hsms[0].id, "hsm-0");
        std::fs::remove_file(d.path("hsm.toml")).unwrap();
        let e = BrokerConfig::load(&d.path("broker.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hsm.toml: cannot read the HSM inventory"), "{e}");
        let e = BrokerConfig::load(&d.path("nope.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope.toml: cannot read the broker config"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn check_config_reports_every_file_and_no_secret() {
        let d = Deployment::new(0o600);
        let report = check_config(&d.path("broker.toml")).unwrap();
        let text = report.to_string();
        for want in [
            "server.tls_cert",
            "1 certificate(s)",
            "server.tls_key",
            "jwks_file",
            "1 key(s)",
            "hsm hsm-0",
            "store.sqlite_path",
            "configuration OK",
        ] {
            assert!(text.contains(want), "{want} missing in:\n{text}");
        }
        assert!(!text.contains("1234-very-secret"), "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn check_config_reads_the_attestation_verifiers_jwks() {
        let d = Deployment::new(0o600);
        let config = d.path("broker.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            format!(
                "{text}\n[[attestation.verifiers]]\nname = \"trustee\"\nprofile = \"ear\"\n\
                 layout = \"trustee\"\njwks_file = \"att.json\"\nalgorithms = [\"ES256\"]\n"
            ),
        )
        .unwrap();
        std::fs::copy(d.path("jwks.json"), d.path("att.json")).unwrap();
        let report = check_config(&config).unwrap().to_string();
        assert!(
            report.contains("attestation.verifiers[0].jwks_file") && report.contains("for trustee"),
            "{report}"
        );
        std::fs::write(d.path("att.json"), "<html>").unwrap();
        let e = check_config(&config).unwrap_err().to_string();
        assert!(e.contains("attestation.verifiers[0].jwks_file:"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn check_config_rejects_broken_referenced_files() {
        let d = Deployment::new(0o644);
        let e = check_config(&d.path("broker.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hsm hsm-0: PIN file") && e.contains("mode 0644"),
            "{e}"
        );
        assert!(!e.contains("1234-very-secret"));

        let d = Deployment::new(0o600);
        std::fs::write(d.path("jwks.json"), r#"{"not_keys":[]}"#).unwrap();
        let e = check_config(&d.path("broker.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("identity.jwt_issuers[0].jwks_file:") && e.contains("no \"keys\" array"),
            "{e}"
        );

        let d = Deployment::new(0o600);
        std::fs::write(d.path("tls/server-key.pem"), "not pem").unwrap();
        let e = check_config(&d.path("broker.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.tls_key:") && e.contains("no PEM private key"),
            "{e}"
        );

        let d = Deployment::new(0o600);
        std::fs::write(d.path("tls/server.pem"), "").unwrap();
        let e = check_config(&d.path("broker.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.tls_cert:") && e.contains("no CERTIFICATE"),
            "{e}"
        );

        let d = Deployment::new(0o600);
        std::fs::remove_file(d.path("libpkcs11.so")).unwrap();
        let e = check_config(&d.path("broker.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("hsm.toml: hsm hsm-0: PKCS#11 module"), "{e}");
    }

    #[test]
    fn check_config_reads_the_client_ca_and_jwks_ca_files() {
        let d = Deployment::new(0o600);
        let text = FULL
            .replace(
                "jwks_file = \"jwks.json\"",
                "jwks_url = \"https://idp.example.eu/jwks\"\njwks_ca_file = \"tls/server.pem\"",
            )
            .replace(
                "[[identity.jwt_issuers]]",
                "[identity]\nmode = \"both\"\nclient_ca_file = \"ca.pem\"\n\
                 trust_domains = [{ domain = \"eu1.example\" }]\n[[identity.jwt_issuers]]",
            );
        std::fs::write(d.path("broker.toml"), text).unwrap();
        std::fs::write(d.path("ca.pem"), "not pem").unwrap();
        let e = check_config(&d.path("broker.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("identity.client_ca_file: ") && e.contains("no PEM certificate"),
            "{e}"
        );
        std::fs::copy(d.path("tls/server.pem"), d.path("ca.pem")).unwrap();
        let report = check_config(&d.path("broker.toml")).unwrap().to_string();
        for want in [
            "jwks_ca_file",
            "jwks_url",
            "not checked offline",
            "1 CA certificate(s)",
        ] {
            assert!(report.contains(want), "{want}: {report}");
        }
    }
}
