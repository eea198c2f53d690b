//! Unit tests: one per inventory rule, plus PIN reading.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use secrecy::ExposeSecret;

use crate::{Inventory, InventoryError, PinSource, TokenSelector, is_valid_jurisdiction};

const GOOD: &str = r#"
[[hsm]]
id = "softhsm-dev"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "keybroker-dev"
pin = { env = "KEYBROKER_HSM_PIN" }
jurisdiction = "EU"
region = "eu-central-1"
provider = "SoftHSM2"
certification = "none"
"#;

fn parse(text: &str) -> Result<Inventory, InventoryError> {
    Inventory::parse(text, Path::new("hsm.toml"))
}

/// `GOOD` with the line starting with `key =` replaced by `line` (or removed when empty).
fn with(key: &str, line: &str) -> String {
    GOOD.lines()
        .map(|l| {
            if l.starts_with(&format!("{key} =")) {
                line
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(inv) => panic!("expected an error, parsed {inv:?}"),
        Err(e) => e.to_string(),
    }
}

fn second(extra: &str) -> String {
    format!(
        "{GOOD}\n[[hsm]]\nid = \"b\"\nmodule = \"/m.so\"\npin = {{ file = \"/p\" }}\njurisdiction = \"CH\"\nregion = \"r\"\nprovider = \"p\"\ncertification = \"c\"\n{extra}"
    )
}

#[test]
fn valid_entry_parses_with_defaults() {
    let inv = parse(GOOD).unwrap();
    let h = &inv.hsms[0];
    assert_eq!(h.id, "softhsm-dev");
    assert_eq!(h.token, TokenSelector::Label("keybroker-dev".into()));
    assert_eq!(h.pin, PinSource::Env("KEYBROKER_HSM_PIN".into()));
    assert_eq!(h.pool_size, 8);
    assert!(inv.get("softhsm-dev").is_some());
    assert!(inv.get("nope").is_none());
}

#[test]
fn slot_selector_and_pin_file_parse() {
    let inv = parse(&second("slot = 3\npool_size = 256")).unwrap();
    assert_eq!(inv.hsms[1].token, TokenSelector::Slot(3));
    assert_eq!(inv.hsms[1].pin, PinSource::File("/p".into()));
    assert_eq!(inv.hsms[1].pool_size, 256);
}

#[test]
fn empty_inventory_is_rejected() {
    assert!(err("").contains("hsm.toml: hsm: the inventory is empty"));
}

#[test]
fn unknown_fields_are_rejected_everywhere() {
    assert!(err(&format!("{GOOD}slots = 1")).contains("unknown field `slots`"));
    assert!(err(&format!("hsms = 1\n{GOOD}")).contains("unknown field `hsms`"));
    let e = err(&with("pin", r#"pin = { env = "X", mode = "strict" }"#));
    assert!(e.contains("unknown field `mode`"), "{e}");
    assert!(e.starts_with("hsm.toml:"), "{e}");
}

#[test]
fn syntax_error_names_line() {
    let e = err(&format!("{GOOD}pool_size = \"eight\""));
    assert!(e.starts_with("hsm.toml:11:"), "{e}");
}

#[test]
fn inline_pin_is_rejected_without_echoing_it() {
    for line in [r#"pin = "s3cr3t-1234""#, "pin = 987654"] {
        let e = err(&with("pin", line));
        assert!(
            e.starts_with("hsm.toml: hsm[0].pin: an inline PIN is not accepted"),
            "{e}"
        );
        assert!(e.contains("env") && e.contains("file"), "{e}");
        assert!(!e.contains("s3cr3t") && !e.contains("987654"), "{e}");
    }
}

#[test]
fn pin_needs_exactly_one_source() {
    let e = err(&with("pin", r#"pin = { env = "A", file = "/p" }"#));
    assert!(e.contains("hsm[0].pin: exactly one of env or file"), "{e}");
    let e = err(&with("pin", "pin = {}"));
    assert!(e.contains("hsm[0].pin: exactly one of env or file"), "{e}");
}

#[test]
fn pin_env_name_and_file_path_are_checked() {
    let e = err(&with("pin", r#"pin = { env = "1BAD-NAME" }"#));
    assert!(e.contains("hsm[0].pin.env:"), "{e}");
    let e = err(&with("pin", r#"pin = { file = "" }"#));
    assert!(e.contains("hsm[0].pin.file: is empty"), "{e}");
}

#[test]
fn duplicate_id_is_rejected() {
    let text = format!("{GOOD}\n{}", GOOD.replace("EU", "CH"));
    let e = err(&text);
    assert!(
        e.contains("hsm[1].id: duplicate id \"softhsm-dev\", already used by hsm[0]"),
        "{e}"
    );
}

#[test]
fn both_label_and_slot_is_rejected() {
    assert_eq!(
        err(&second("token_label = \"x\"\nslot = 0")),
        "hsm.toml: hsm[1].slot: exactly one of token_label or slot must be set"
    );
}

#[test]
fn neither_label_nor_slot_is_rejected() {
    let e = err(&with("token_label", ""));
    assert!(
        e.contains("hsm[0].token_label: exactly one of token_label or slot"),
        "{e}"
    );
}

#[test]
fn id_syntax_is_enforced() {
    let long = format!("id = \"{}\"", "a".repeat(64));
    for bad in [
        r#"id = "Soft""#,
        r#"id = "-a""#,
        r#"id = """#,
        r#"id = "a_b""#,
        &long,
    ] {
        let e = err(&with("id", bad));
        assert!(
            e.contains("hsm[0].id:") && e.contains("not a valid id"),
            "{e}"
        );
    }
    let max = format!("id = \"{}\"", "a".repeat(63));
    assert!(parse(&with("id", &max)).is_ok());
}

#[test]
fn module_must_be_absolute() {
    let e = err(&with("module", r#"module = "libsofthsm2.so""#));
    assert!(
        e.contains("hsm[0].module: libsofthsm2.so is not an absolute path"),
        "{e}"
    );
}

#[test]
fn token_label_length_is_1_to_32_bytes() {
    let e = err(&with(
        "token_label",
        &format!("token_label = \"{}\"", "x".repeat(33)),
    ));
    assert!(
        e.contains("hsm[0].token_label: must be 1..=32 bytes"),
        "{e}"
    );
    assert!(err(&with("token_label", r#"token_label = """#)).contains("got 0"));
    // 11 three-byte characters: 11 chars but 33 bytes.
    let e = err(&with(
        "token_label",
        &format!("token_label = \"{}\"", "€".repeat(11)),
    ));
    assert!(e.contains("got 33"), "{e}");
    let ok = with(
        "token_label",
        &format!("token_label = \"{}\"", "x".repeat(32)),
    );
    assert!(parse(&ok).is_ok());
}

#[test]
fn jurisdiction_syntax_is_enforced() {
    for bad in ["eu", "E", "EUROPE", "EU-", "EU_1", "US-gov"] {
        assert!(!is_valid_jurisdiction(bad), "{bad}");
    }
    for good in ["EU", "CH", "UK", "US", "EEA", "US-GOV", "DE-BY"] {
        assert!(is_valid_jurisdiction(good), "{good}");
    }
    let e = err(&with("jurisdiction", r#"jurisdiction = "eu""#));
    assert!(
        e.contains("hsm[0].jurisdiction: \"eu\" is not a jurisdiction code"),
        "{e}"
    );
}

#[test]
fn pool_size_range_is_enforced() {
    for (v, ok) in [
        (0, false),
        (1, true),
        (256, true),
        (257, false),
        (-1, false),
    ] {
        let r = parse(&format!("{GOOD}pool_size = {v}"));
        assert_eq!(r.is_ok(), ok, "{v}: {r:?}");
        if let Err(e) = r {
            assert!(
                e.to_string()
                    .contains("hsm[0].pool_size: must be in 1..=256")
            );
        }
    }
}

#[test]
fn descriptive_fields_must_not_be_empty() {
    let e = err(&with("region", r#"region = " ""#));
    assert!(e.contains("hsm[0].region: must not be empty"), "{e}");
    let e = err(&with("certification", "certification = \"a\\u0007\""));
    assert!(
        e.contains("hsm[0].certification: must not contain control"),
        "{e}"
    );
}

#[test]
fn pin_from_env_reads_the_variable() {
    // PATH is always set; setting variables needs `unsafe` in edition 2024.
    let pin = PinSource::Env("PATH".into()).read().unwrap();
    assert_eq!(pin.expose_secret(), std::env::var("PATH").unwrap());
}

#[test]
fn missing_pin_env_names_the_variable() {
    let e = PinSource::Env("KEYBROKER_TEST_SURELY_UNSET_9F2".into())
        .read()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "PIN environment variable KEYBROKER_TEST_SURELY_UNSET_9F2 is not set"
    );
}

#[cfg(unix)]
fn pin_file(content: &str, mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pin");
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

#[cfg(unix)]
#[test]
fn pin_file_trims_exactly_one_trailing_newline() {
    for (content, want) in [
        ("1234\n", "1234"),
        ("1234\r\n", "1234"),
        ("12 34\n\n", "12 34\n"),
        ("u:p", "u:p"),
    ] {
        let (_dir, path) = pin_file(content, 0o600);
        assert_eq!(PinSource::File(path).read().unwrap().expose_secret(), want);
    }
}

#[cfg(unix)]
#[test]
fn group_readable_pin_file_is_refused_without_content() {
    let (_dir, path) = pin_file("topsecret\n", 0o640);
    let e = PinSource::File(path.clone()).read().unwrap_err();
    let msg = e.to_string();
    assert!(matches!(
        e,
        InventoryError::PinFilePermissions { mode: 0o640, .. }
    ));
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("mode 0640"),
        "{msg}"
    );
    assert!(!msg.contains("topsecret"), "{msg}");
    let (_dir, path) = pin_file("x", 0o604);
    assert!(PinSource::File(path).read().is_err());
}

#[cfg(unix)]
#[test]
fn empty_or_missing_pin_file_is_an_error() {
    let (_dir, path) = pin_file("\n", 0o600);
    assert!(matches!(
        PinSource::File(path).read(),
        Err(InventoryError::PinEmpty { .. })
    ));
    let e = PinSource::File("/nonexistent/keybroker/pin".into())
        .read()
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/keybroker/pin"));
}

#[test]
fn check_module_exists_reports_missing_module() {
    let inv = parse(&with("module", r#"module = "/nonexistent/libpkcs11.so""#)).unwrap();
    let e = inv.hsms[0].check_module_exists().unwrap_err().to_string();
    assert!(
        e.starts_with("PKCS#11 module /nonexistent/libpkcs11.so:"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("lib.so");
    std::fs::write(&module, b"").unwrap();
    let mut entry = inv.hsms[0].clone();
    entry.module = module;
    assert!(entry.check_module_exists().is_ok());
    entry.module = dir.path().to_path_buf();
    assert!(entry.check_module_exists().is_err());
}

#[test]
fn load_names_the_file_it_cannot_read() {
    let e = Inventory::load(Path::new("/nonexistent/hsm.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/hsm.toml: cannot read")
    );
}

#[test]
fn a_relative_pin_file_resolves_against_the_inventory_directory() {
    let text = with("pin", r#"pin = { file = "secrets/pin" }"#);
    let inv = Inventory::parse(&text, Path::new("/etc/keybroker/hsm.toml")).unwrap();
    assert_eq!(
        inv.get("softhsm-dev").map(|e| e.pin.clone()),
        Some(PinSource::File(
            Path::new("/etc/keybroker/secrets/pin").to_path_buf()
        ))
    );
    let text = with("pin", r#"pin = { file = "/run/secrets/pin" }"#);
    let inv = Inventory::parse(&text, Path::new("/etc/keybroker/hsm.toml")).unwrap();
    assert_eq!(
        inv.get("softhsm-dev").map(|e| e.pin.clone()),
        Some(PinSource::File(Path::new("/run/secrets/pin").to_path_buf()))
    );
}
