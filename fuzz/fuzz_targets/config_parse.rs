//! Fuzz target: the broker config parser (TOML, then every field's validation) must never
//! panic, and a config it accepts keeps the rules the rest of the broker relies on. The HSM
//! inventory is given (the inventory parser has its own target), so nothing is read from disk.
//!
//! The config files are compiled in directly, as for `envelope_parse`, so the fuzz build does
//! not build the broker.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

// The broker's `config` module at this crate's root (it names itself `crate::config`), and
// the one identity file it uses, at the path it uses.
#[allow(
    dead_code,
    unused_imports,
    reason = "only the parser is exercised here"
)]
#[path = "../../broker/src/config/mod.rs"]
mod config;
#[allow(dead_code, reason = "only the parser is exercised here")]
#[path = "../../broker/src/identity/spiffe.rs"]
mod spiffe;
mod identity {
    pub(crate) use super::spiffe;
}

/// One valid inventory, parsed once: the config is checked against it.
fn inventory() -> &'static hsm_config::Inventory {
    static INVENTORY: OnceLock<hsm_config::Inventory> = OnceLock::new();
    INVENTORY.get_or_init(|| {
        let text = include_str!("../../hsm-config/examples/softhsm2.toml");
        match hsm_config::Inventory::parse(text, Path::new("/fuzz/hsm.toml")) {
            Ok(i) => i,
            Err(e) => panic!("the example inventory must parse: {e}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/fuzz/etc/broker.toml");
    let Ok(config) = config::BrokerConfig::parse_with_inventory(text, path, inventory().clone())
    else {
        return;
    };
    // Accepted: every issuer has algorithms and audiences (`none`/HMAC are not representable),
    // and every path is resolved against the config's directory.
    for issuer in &config.identity.jwt_issuers {
        assert!(!issuer.algorithms.is_empty() && !issuer.audiences.is_empty());
    }
    for p in [
        &config.hsm_inventory,
        &config.audit.dir,
        &config.server.tls_cert,
        &config.server.tls_key,
    ] {
        assert!(p.is_absolute(), "relative path {} accepted", p.display());
    }
});
