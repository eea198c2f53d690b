//! The example configs under `deploy/config/` load: they are what operators copy, so they must
//! stay valid as the config evolves.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::path::PathBuf;

use super::{BrokerConfig, ConfigError, IdentityMode, LogFormat};

fn example(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config")).join(name)
}

#[test]
fn the_single_node_example_config_loads() {
    let c = BrokerConfig::load(&example("broker.toml")).unwrap();
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(c.http.is_some());
    assert_eq!(c.inventory.hsms.len(), 1);
}

#[test]
fn the_mtls_and_transit_example_config_loads() {
    let c = BrokerConfig::load(&example("broker-mtls.toml")).unwrap();
    assert_eq!(c.identity.mode, IdentityMode::Both);
    assert!(c.http.unwrap().transit.is_some());
}

#[test]
fn the_kubernetes_base_config_loads() {
    let path = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/config/broker.toml"
    ));
    let c = BrokerConfig::load(&path).unwrap();
    assert_eq!(c.http.unwrap().listen.port(), 9443);
}

#[test]
fn a_config_file_others_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    for name in ["broker.toml", "hsm.toml"] {
        std::fs::copy(example(name), dir.path().join(name)).unwrap();
    }
    let config = dir.path().join("broker.toml");
    assert!(BrokerConfig::load(&config).is_ok());
    for (file, mode) in [
        ("broker.toml", 0o666),
        ("broker.toml", 0o620),
        ("hsm.toml", 0o602),
    ] {
        let path = dir.path().join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = BrokerConfig::load(&config).unwrap_err();
        assert!(
            matches!(e, ConfigError::Permissions { .. }),
            "{file} {mode:o}: {e}"
        );
        assert!(e.to_string().contains("chmod go-w"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    // Readable by others is fine: a config holds no secret.
    assert!(BrokerConfig::load(&config).is_ok());
}
