//! The one error type of this crate: every variant names the file (or PIN source) it is about.

use std::path::PathBuf;

/// Why an inventory could not be loaded, validated, or a PIN could not be read.
///
/// Messages never contain PIN material.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The inventory file could not be read.
    #[error("{}: cannot read the HSM inventory: {source}", path.display())]
    Read {
        /// The inventory file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or does not have the inventory's shape (unknown or
    /// mistyped field).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The inventory file.
        path: PathBuf,
        /// 1-based line of the problem (0 when unknown).
        line: usize,
        /// 1-based column of the problem (0 when unknown).
        column: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// A field has a value that breaks one of the inventory's rules.
    #[error("{}: {field}: {problem}", path.display())]
    Invalid {
        /// The inventory file.
        path: PathBuf,
        /// Dotted field path, e.g. `hsm[1].slot`.
        field: String,
        /// What is wrong, and how to fix it when that is not obvious.
        problem: String,
    },
    /// The environment variable that should hold the PIN is not set.
    #[error("PIN environment variable {var} is not set")]
    PinEnvMissing {
        /// Name of the variable.
        var: String,
    },
    /// The PIN (from an environment variable or a file) is not valid UTF-8.
    #[error("PIN from {source_name} is not valid UTF-8")]
    PinNotUtf8 {
        /// `environment variable NAME` or `file PATH`.
        source_name: String,
    },
    /// The PIN (after trimming one trailing newline) is empty.
    #[error("PIN from {source_name} is empty")]
    PinEmpty {
        /// `environment variable NAME` or `file PATH`.
        source_name: String,
    },
    /// The PIN file could not be opened or read.
    #[error("cannot read PIN file {}: {source}", path.display())]
    PinFileRead {
        /// The PIN file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The PIN file grants access to group or others.
    #[error(
        "PIN file {} has mode {mode:04o}: it must not be accessible by group or others \
         (chmod 600, or defaultMode 0400 for a Kubernetes secret volume)",
        path.display()
    )]
    PinFilePermissions {
        /// The PIN file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The PKCS#11 module of an entry does not exist or is not a regular file. The message
    /// leaves the entry id to the caller's context (`hsm <id>: …`).
    #[error("PKCS#11 module {}: {problem}", path.display())]
    ModuleMissing {
        /// The entry's id.
        id: String,
        /// The module path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}
