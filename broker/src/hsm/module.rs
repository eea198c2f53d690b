//! Per-process lifecycle of a PKCS#11 module (library): `C_Initialize` / `C_Finalize` state.
//!
//! Why a process-wide table: a PKCS#11 library is initialized once per *process*, not per
//! `Pkcs11` value. `dlopen` of the same path returns the same library, so a second
//! `Pkcs11::new` + `initialize` answers `CKR_CRYPTOKI_ALREADY_INITIALIZED`, and a `C_Finalize`
//! from one pool closes the sessions of every other pool on that module. Each pool still owns
//! its own `Pkcs11` context, sessions and login; this table only holds, per module path, a
//! lock that orders PKCS#11 calls (shared) against finalize/initialize (exclusive), and an
//! epoch that says "the library was re-initialized, every session opened before is dead".
//! It holds no context, session, handle or PIN.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, RwLockReadGuard};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

use super::error::HsmError;

/// Lifecycle state of one PKCS#11 library in this process.
#[derive(Debug, Default)]
pub(crate) struct ModuleLife {
    /// Incremented by every finalize + initialize. Shared (read) while a PKCS#11 call runs.
    epoch: RwLock<u64>,
}

type Table = Mutex<HashMap<PathBuf, Arc<ModuleLife>>>;

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(Table::default)
}

impl ModuleLife {
    /// The lifecycle entry for the module at `path` (canonicalized when possible).
    pub(crate) fn for_path(path: &Path) -> Arc<Self> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut map = table().lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key).or_default())
    }

    /// Held while a PKCS#11 call runs, so that no finalize happens under it; derefs to the
    /// current epoch.
    pub(crate) fn shared(&self) -> RwLockReadGuard<'_, u64> {
        self.epoch.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current epoch.
    pub(crate) fn epoch(&self) -> u64 {
        *self.shared()
    }

    /// `C_Initialize`, accepting a library another pool of this process already initialized.
    pub(crate) fn initialize(&self, ctx: &Pkcs11) -> Result<u64, HsmError> {
        let epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
        init(ctx)?;
        Ok(*epoch)
    }

    /// Finalize + initialize, unless someone did it since `seen` (then their result is used).
    /// Every session of every pool on this module is dead afterwards; pools notice the new
    /// epoch and reopen theirs. Returns the new epoch and whether this call did it.
    pub(crate) fn reinitialize(&self, ctx: &Pkcs11, seen: u64) -> Result<(u64, bool), HsmError> {
        let mut epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
        if *epoch != seen {
            return Ok((*epoch, false));
        }
        match ctx.clone().finalize() {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
            Err(source) => return Err(HsmError::ck("C_Finalize")(source)),
        }
        *epoch += 1;
        init(ctx)?;
        Ok((*epoch, true))
    }
}

fn init(ctx: &Pkcs11) -> Result<(), HsmError> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(source) => Err(HsmError::ck("C_Initialize")(source)),
    }
}
