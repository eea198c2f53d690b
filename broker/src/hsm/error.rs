//! `HsmError` and the one triage function that sorts PKCS#11 failures into caller errors,
//! broken sessions and a lost device; the pool's retry and re-initialization logic keys off it.

use std::path::PathBuf;

use cryptoki::error::{Error as CkError, RvError};

/// What a failure means for the pool, and therefore for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HsmErrorKind {
    /// The request itself is wrong (bad data, unknown key, wrong tag…): the session is fine and
    /// is kept; retrying the same request gives the same answer.
    Caller,
    /// The session (or an object handle it used) is no longer valid: the session is dropped and
    /// the operation is retried once on a fresh one.
    BrokenSession,
    /// The token or the library is gone or unusable: the pool is marked unhealthy, drained and
    /// re-initialized; the caller gets a retryable `Unavailable`.
    DeviceGone,
}

/// Errors of the HSM layer. The typed PKCS#11 source is kept, never flattened to a string;
/// no variant carries key material, plaintext or a PIN.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The PKCS#11 module could not be loaded (missing file, wrong architecture, no symbols).
    #[error("cannot load PKCS#11 module {}", module.display())]
    ModuleLoad {
        /// Path of the module as configured.
        module: PathBuf,
        /// What the loader said.
        #[source]
        source: CkError,
    },
    /// No slot holds a token matching the selector.
    #[error("no token matching {selector} is present")]
    TokenNotFound {
        /// The selector, for the operator (`label "x"` or `slot 3`).
        selector: String,
    },
    /// The token refused the user PIN.
    #[error("login to the token failed: the user PIN is wrong")]
    LoginFailed {
        /// The token's answer (e.g. `CKR_PIN_INCORRECT`).
        #[source]
        source: CkError,
    },
    /// No key object with this label exists on the token.
    #[error("no key with label {label:?} on the token")]
    KeyNotFound {
        /// The label that was looked up.
        label: String,
    },
    /// An object with this label already exists on the token.
    #[error("an object with label {label:?} already exists on the token")]
    AlreadyExists {
        /// The label that was asked for.
        label: String,
    },
    /// Authenticated decryption failed: wrong key, AAD, IV or a modified ciphertext.
    #[error("decryption failed: the ciphertext or its associated data does not authenticate")]
    DecryptFailed,
    /// The request is malformed before it reaches the token.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// Why, in words safe to show a caller.
        reason: &'static str,
    },
    /// A PKCS#11 call failed; `kind()` says what that means.
    #[error("PKCS#11 {op} failed")]
    Pkcs11 {
        /// The operation that failed (e.g. `C_Encrypt`).
        op: &'static str,
        /// The typed PKCS#11 error.
        #[source]
        source: CkError,
    },
    /// The pool cannot serve now (device gone, re-initializing, closed); retry later.
    #[error("HSM unavailable: {reason}")]
    Unavailable {
        /// Why, for the operator.
        reason: &'static str,
    },
    /// A blocking PKCS#11 task panicked or was cancelled.
    #[error("PKCS#11 worker task failed")]
    Join(#[from] tokio::task::JoinError),
}

impl HsmError {
    /// Sorts this error into caller error, broken session or device gone.
    #[must_use]
    pub fn kind(&self) -> HsmErrorKind {
        match self {
            Self::Pkcs11 { source, .. } => triage(source),
            Self::ModuleLoad { .. }
            | Self::LoginFailed { .. }
            | Self::KeyNotFound { .. }
            | Self::AlreadyExists { .. }
            | Self::DecryptFailed
            | Self::InvalidRequest { .. } => HsmErrorKind::Caller,
            Self::Join(_) => HsmErrorKind::BrokenSession,
            Self::TokenNotFound { .. } | Self::Unavailable { .. } => HsmErrorKind::DeviceGone,
        }
    }

    /// Wraps a cryptoki error from operation `op`.
    pub(crate) fn ck(op: &'static str) -> impl FnOnce(CkError) -> Self {
        move |source| Self::Pkcs11 { op, source }
    }
}

/// The one place that decides what a PKCS#11 error means.
///
/// `CKR_GENERAL_ERROR` counts as device gone: the standard defines it as an unrecoverable
/// error, and SoftHSM answers it from `C_GetTokenInfo` once the token's files are gone.
/// Object-handle errors count as a broken session: the handle (cached or not) went stale, so
/// the caller evicts it, takes a fresh session and looks the key up again.
#[must_use]
pub fn triage(error: &CkError) -> HsmErrorKind {
    match error {
        CkError::Pkcs11(rv, _) => triage_rv(*rv),
        CkError::LibraryLoading(_) | CkError::NullFunctionPointer | CkError::MissingSymbol(_) => {
            HsmErrorKind::DeviceGone
        }
        _ => HsmErrorKind::Caller,
    }
}

fn triage_rv(rv: RvError) -> HsmErrorKind {
    use RvError as R;
    match rv {
        R::DeviceRemoved
        | R::DeviceError
        | R::DeviceMemory
        | R::TokenNotPresent
        | R::TokenNotRecognized
        | R::SlotIdInvalid
        | R::CryptokiNotInitialized
        | R::UserNotLoggedIn
        | R::GeneralError
        | R::FipsSelfTestFailed => HsmErrorKind::DeviceGone,
        R::SessionHandleInvalid
        | R::SessionClosed
        | R::SessionCount
        | R::ObjectHandleInvalid
        | R::KeyHandleInvalid
        | R::OperationActive
        | R::HostMemory
        | R::CantLock
        | R::MutexBad => HsmErrorKind::BrokenSession,
        _ => HsmErrorKind::Caller,
    }
}

/// True when the error says an object handle went stale (evict it from the cache).
pub(crate) fn is_stale_handle(error: &HsmError) -> bool {
    matches!(
        error,
        HsmError::Pkcs11 {
            source: CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _),
            ..
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    fn kind(rv: RvError) -> HsmErrorKind {
        triage(&CkError::Pkcs11(rv, Function::Encrypt))
    }

    #[test]
    fn triage_sorts_the_three_kinds() {
        assert_eq!(kind(RvError::EncryptedDataInvalid), HsmErrorKind::Caller);
        assert_eq!(kind(RvError::DataLenRange), HsmErrorKind::Caller);
        assert_eq!(
            kind(RvError::SessionHandleInvalid),
            HsmErrorKind::BrokenSession
        );
        assert_eq!(kind(RvError::SessionClosed), HsmErrorKind::BrokenSession);
        assert_eq!(
            kind(RvError::ObjectHandleInvalid),
            HsmErrorKind::BrokenSession
        );
        assert_eq!(kind(RvError::DeviceRemoved), HsmErrorKind::DeviceGone);
        assert_eq!(kind(RvError::TokenNotPresent), HsmErrorKind::DeviceGone);
        assert_eq!(
            kind(RvError::CryptokiNotInitialized),
            HsmErrorKind::DeviceGone
        );
        assert_eq!(kind(RvError::UserNotLoggedIn), HsmErrorKind::DeviceGone);
    }

    #[test]
    fn login_failure_message_never_holds_the_pin() {
        let e = HsmError::LoginFailed {
            source: CkError::Pkcs11(RvError::PinIncorrect, Function::Login),
        };
        assert!(e.to_string().contains("PIN is wrong"));
        assert_eq!(e.kind(), HsmErrorKind::Caller);
    }
}
