//! Fuzz target: the HSM inventory parser (`hsm-config`, TOML plus validation) must never
//! panic, and an inventory it accepts keeps its rules: ids unique, module paths absolute, no
//! inline PIN. `hsm-config` is a small pure crate, so it is used as a dependency.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(inventory) = hsm_config::Inventory::parse(text, Path::new("/fuzz/hsm.toml")) else {
        return;
    };
    let mut ids = std::collections::BTreeSet::new();
    for hsm in &inventory.hsms {
        assert!(
            ids.insert(hsm.id.clone()),
            "duplicate id {:?} accepted",
            hsm.id
        );
        assert!(hsm.module.is_absolute(), "relative module path accepted");
        assert!(hsm_config::is_valid_jurisdiction(&hsm.jurisdiction));
    }
});
