//! Every vendor sample in `examples/` must parse and validate.

use std::path::Path;

use hsm_config::Inventory;

#[test]
fn every_example_inventory_parses() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let inv = Inventory::load(&path)?;
            assert!(!inv.hsms.is_empty(), "{}", path.display());
            names.push(path.file_name().map(|n| n.to_string_lossy().into_owned()));
        }
    }
    names.sort();
    for want in [
        "aws-cloudhsm.toml",
        "eviden-trustway-proteccio.toml",
        "softhsm2.toml",
        "thales-luna.toml",
        "utimaco.toml",
    ] {
        assert!(names.iter().flatten().any(|n| n == want), "missing {want}");
    }
    Ok(())
}
