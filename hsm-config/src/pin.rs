//! Reading a PIN from its source at login time, without letting it reach errors or logs.

use std::io::Read;
use std::path::Path;

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::{InventoryError, PinSource};

const MAX_PIN_FILE_LEN: usize = 4096;

impl PinSource {
    /// Reads the PIN, trimming one trailing newline (`\n` or `\r\n`).
    ///
    /// A PIN file must not be accessible by group or others (checked on the opened file, so a
    /// swap between check and read does not help an attacker). Errors name the variable or
    /// the path and never the content.
    ///
    /// # Errors
    /// [`InventoryError::PinEnvMissing`], [`InventoryError::PinFileRead`],
    /// [`InventoryError::PinFilePermissions`], [`InventoryError::PinNotUtf8`] or
    /// [`InventoryError::PinEmpty`].
    pub fn read(&self) -> Result<SecretString, InventoryError> {
        match self {
            Self::Env(var) => {
                let value = std::env::var_os(var)
                    .ok_or_else(|| InventoryError::PinEnvMissing { var: var.clone() })?;
                let value = Zeroizing::new(value.into_encoded_bytes());
                finish(&value, || format!("environment variable {var}"))
            }
            Self::File(path) => {
                let bytes = read_private_file(path)?;
                finish(&bytes, || format!("file {}", path.display()))
            }
        }
    }
}

fn read_private_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, InventoryError> {
    let io_err = |source| InventoryError::PinFileRead {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(InventoryError::PinFilePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    // A PIN is short; 4 KiB is plenty and bounds what a wrong path (e.g. a device) could cost.
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_PIN_FILE_LEN + 1));
    file.by_ref()
        .take(MAX_PIN_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() > MAX_PIN_FILE_LEN {
        return Err(io_err(std::io::Error::other(
            "larger than 4 KiB: this is not a PIN file",
        )));
    }
    Ok(bytes)
}

fn finish(bytes: &[u8], source_name: impl Fn() -> String) -> Result<SecretString, InventoryError> {
    let text = std::str::from_utf8(bytes).map_err(|_| InventoryError::PinNotUtf8 {
        source_name: source_name(),
    })?;
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    if text.is_empty() {
        return Err(InventoryError::PinEmpty {
            source_name: source_name(),
        });
    }
    Ok(SecretString::from(text.to_owned()))
}
