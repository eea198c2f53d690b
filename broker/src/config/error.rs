//! `ConfigError`: every variant names the file, the field and the problem.

use std::path::PathBuf;

use hsm_config::InventoryError;

/// Why the broker configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: cannot read the broker config: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or an unknown / missing / mistyped field.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// A field's value breaks a rule.
    #[error("{}: {field}: {problem}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Dotted field path, e.g. `keys.max_lease_ttl`.
        field: String,
        /// What is wrong.
        problem: String,
    },
    /// The HSM inventory named by `hsm_inventory` is unreadable or invalid.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// A config file others could change (group- or world-writable): whoever can write it
    /// chooses the policy, the issuers and the HSM module the broker loads.
    #[error(
        "{}: mode {mode:04o} lets group or others write it; run chmod go-w {}",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `check-config`: a file the config refers to is missing, unreadable or malformed.
    #[error("{}: {field}: {}: {problem}", path.display(), file.display())]
    Check {
        /// The config file.
        path: PathBuf,
        /// The field that names the file.
        field: String,
        /// The referenced file.
        file: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// `check-config`: an HSM entry's module or PIN source is not usable.
    #[error("{}: hsm {id}: {source}", inventory.display())]
    HsmCheck {
        /// The inventory file.
        inventory: PathBuf,
        /// The HSM entry's id.
        id: String,
        /// What failed (never contains the PIN).
        #[source]
        source: Box<InventoryError>,
    },
}
