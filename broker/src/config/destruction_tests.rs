//! `[keys]` destruction waits: defaults, the 1-day floor, and the test-only short-wait switch
//! that is refused unless every HSM of the inventory is SoftHSM2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use hsm_config::Inventory;

use super::tests::{FULL, inventory};
use super::{BrokerConfig, ConfigError};

fn inv(provider: &str) -> Inventory {
    let text = inventory(&["EU"], "{ env = \"PIN\" }", "/m.so")
        .replace("provider = \"p\"", &format!("provider = \"{provider}\""));
    Inventory::parse(&text, Path::new("hsm.toml")).unwrap()
}

fn with_keys(extra: &str, provider: &str) -> Result<BrokerConfig, ConfigError> {
    let text = FULL.replace("[keys]\n", &format!("[keys]\n{extra}\n"));
    BrokerConfig::parse_with_inventory(&text, Path::new("broker.toml"), inv(provider))
}

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn destruction_waits_default_to_seven_days() {
    let c = with_keys("", "SoftHSM2").unwrap();
    assert_eq!(c.keys.default_destruction_wait, 7 * DAY);
    assert_eq!(c.keys.min_destruction_wait, 7 * DAY);
    assert!(!c.keys.allow_short_destruction_wait);
}

#[test]
fn floor_below_one_day_needs_the_short_wait_switch() {
    let e = with_keys("min_destruction_wait = \"5s\"", "SoftHSM2")
        .unwrap_err()
        .to_string();
    assert!(e.contains("keys.min_destruction_wait"), "{e}");
    assert!(e.contains("allow_short_destruction_wait"), "{e}");
    let c = with_keys(
        "min_destruction_wait = \"5s\"\nallow_short_destruction_wait = true",
        "SoftHSM2",
    )
    .unwrap();
    assert_eq!(c.keys.min_destruction_wait, Duration::from_secs(5));
    // The default wait follows the floor only upwards: still 7 days.
    assert_eq!(c.keys.default_destruction_wait, 7 * DAY);
    let c = with_keys("min_destruction_wait = \"2d\"", "Thales Luna").unwrap();
    assert_eq!(c.keys.min_destruction_wait, 2 * DAY);
}

#[test]
fn short_wait_switch_is_refused_on_a_real_hsm() {
    let e = with_keys("allow_short_destruction_wait = true", "Thales Luna")
        .unwrap_err()
        .to_string();
    assert!(e.contains("keys.allow_short_destruction_wait"), "{e}");
    assert!(e.contains("Thales Luna"), "{e}");
}

#[test]
fn default_wait_below_the_floor_is_refused() {
    let e = with_keys(
        "min_destruction_wait = \"10d\"\ndefault_destruction_wait = \"8d\"",
        "x",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("keys.default_destruction_wait"), "{e}");
}
