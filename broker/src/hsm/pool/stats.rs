//! Counters of one session pool for the metrics sampler: how often a caller had to wait for a
//! session, and failed PKCS#11 calls by return code (`CKR_…`). Counting is a relaxed atomic or
//! a short lock on the failure path only; the hot path never takes a lock here.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cryptoki::error::Error as CkError;

use super::super::error::HsmError;

/// A point-in-time view of one pool, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// Sessions handed out now.
    pub in_use: usize,
    /// Open sessions waiting in the pool.
    pub idle: usize,
    /// Calls that found every session taken and waited (since start).
    pub waits: u64,
    /// Failed PKCS#11 calls by return code (since start), e.g. `CKR_DEVICE_REMOVED`, or
    /// `tag_mismatch` for an AES-GCM tag that did not verify.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
pub(crate) struct PoolStats {
    waits: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl PoolStats {
    pub(crate) fn waited(&self) {
        self.waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `error` under its PKCS#11 return code; errors that are not a token's answer
    /// (a key not found by label, a bad request) are not counted.
    pub(crate) fn failed(&self, error: &HsmError) {
        let code = match error {
            HsmError::Pkcs11 { source, .. }
            | HsmError::LoginFailed { source }
            | HsmError::ModuleLoad { source, .. } => code(source),
            // Tokens disagree on the code of a tag mismatch (SoftHSM: CKR_GENERAL_ERROR, others:
            // CKR_ENCRYPTED_DATA_INVALID); `ops::decrypt_gcm` already told them apart.
            HsmError::DecryptFailed => "tag_mismatch".to_owned(),
            _ => return,
        };
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(code).or_default() += 1;
        }
    }

    pub(crate) fn snapshot(&self, in_use: usize, idle: usize) -> PoolSnapshot {
        PoolSnapshot {
            in_use,
            idle,
            waits: self.waits.load(Ordering::Relaxed),
            errors: self.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }
}

/// `CKR_DEVICE_REMOVED` for `RvError::DeviceRemoved`; a non-PKCS#11 failure (the library
/// could not be loaded, a symbol is missing) gets a fixed name. A bounded set: metric labels.
fn code(error: &CkError) -> String {
    let CkError::Pkcs11(rv, _) = error else {
        return "library_error".to_owned();
    };
    let variant = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in variant.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use cryptoki::context::Function;
    use cryptoki::error::RvError;

    use super::*;

    #[test]
    fn failures_are_counted_by_ckr_name_and_waits_add_up() {
        let stats = PoolStats::default();
        let gone = || HsmError::Pkcs11 {
            op: "C_Encrypt",
            source: CkError::Pkcs11(RvError::DeviceRemoved, Function::Encrypt),
        };
        stats.failed(&gone());
        stats.failed(&gone());
        stats.failed(&HsmError::KeyNotFound { label: "x".into() });
        stats.waited();
        let s = stats.snapshot(2, 1);
        assert_eq!(s.errors.get("CKR_DEVICE_REMOVED"), Some(&2));
        assert_eq!(s.errors.len(), 1, "{s:?}");
        assert_eq!((s.in_use, s.idle, s.waits), (2, 1, 1));
    }
}
