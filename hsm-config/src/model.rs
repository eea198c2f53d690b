//! The validated inventory model: what the rest of keybroker sees once the TOML has passed.

use std::path::PathBuf;

use crate::InventoryError;

/// Default number of PKCS#11 sessions the broker keeps open per HSM.
pub const DEFAULT_POOL_SIZE: u16 = 8;
/// Largest accepted `pool_size`.
pub const MAX_POOL_SIZE: u16 = 256;
/// PKCS#11 token labels are a fixed 32-byte, blank-padded field (`CK_TOKEN_INFO.label`).
pub const MAX_TOKEN_LABEL_LEN: usize = 32;

/// The HSMs keybroker may use, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    /// At least one entry; ids are unique.
    pub hsms: Vec<HsmEntry>,
}

/// One PKCS#11 token keybroker may keep keys on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsmEntry {
    /// Stable identifier, `[a-z0-9][a-z0-9-]{0,62}`; keys refer to their HSM by it.
    pub id: String,
    /// Absolute path of the vendor's PKCS#11 module (shared library).
    pub module: PathBuf,
    /// Which token of the module to use.
    pub token: TokenSelector,
    /// Where the user PIN comes from (never the config text itself).
    pub pin: PinSource,
    /// Legal jurisdiction the HSM sits in: upper-case code such as `EU`, `CH`, `UK`, `US`.
    pub jurisdiction: String,
    /// Provider region or site, free-form (`eu-central-1`, `de-fra-1`).
    pub region: String,
    /// Who operates the HSM (`SoftHSM2`, `AWS CloudHSM`, …).
    pub provider: String,
    /// Certification claim, for operators and auditors (`FIPS 140-3 Level 3`, `none`).
    pub certification: String,
    /// PKCS#11 sessions to keep open, `1..=256`.
    pub pool_size: u16,
}

/// How to find the token inside a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token with this label (1..=32 bytes); survives slot renumbering.
    Label(String),
    /// The token in this slot id.
    Slot(u64),
}

/// Where the user PIN is read from at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// An environment variable of the broker process.
    Env(String),
    /// A file readable only by the broker's user (a relative path in the inventory is resolved
    /// against the inventory file's directory).
    File(PathBuf),
}

impl Inventory {
    /// The entry with this id, if any.
    #[must_use]
    pub fn get(&self, id: &str) -> Option<&HsmEntry> {
        self.hsms.iter().find(|h| h.id == id)
    }
}

impl HsmEntry {
    /// Checks that the PKCS#11 module exists and is a regular file (after symlinks).
    ///
    /// Validation does not touch the file system; the broker calls this at start-up and
    /// `check-config` reports it.
    ///
    /// # Errors
    /// [`InventoryError::ModuleMissing`] naming the entry and the path.
    pub fn check_module_exists(&self) -> Result<(), InventoryError> {
        let missing = |problem: String| InventoryError::ModuleMissing {
            id: self.id.clone(),
            path: self.module.clone(),
            problem,
        };
        let meta = std::fs::metadata(&self.module).map_err(|e| missing(e.to_string()))?;
        if meta.is_file() {
            Ok(())
        } else {
            Err(missing("not a regular file".to_owned()))
        }
    }
}

/// Whether `code` is a syntactically valid jurisdiction code: two or three upper-case ASCII
/// letters (`EU`, `CH`, `EEA`), optionally followed by `-` and 1..=8 upper-case letters or
/// digits for a sub-jurisdiction (`US-GOV`, `DE-BY`).
#[must_use]
pub fn is_valid_jurisdiction(code: &str) -> bool {
    let (head, tail) = match code.split_once('-') {
        Some((h, t)) => (h, Some(t)),
        None => (code, None),
    };
    let head_ok = (2..=3).contains(&head.len()) && head.bytes().all(|b| b.is_ascii_uppercase());
    let tail_ok = tail.is_none_or(|t| {
        (1..=8).contains(&t.len())
            && t.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    });
    head_ok && tail_ok
}
