//! PKCS#11 access: a bounded session pool per HSM, every call off the async workers, error triage.
//!
//! [`HsmPool`] is the only way in. It owns its cryptoki context and sessions; no session or
//! object handle leaves this module. Keys are addressed by label. Key objects are always used
//! in place on the token: no session copies, so a destroyed key is unusable at once.

mod eddsa;
mod eddsa_pool;
mod error;
mod module;
mod ops;
mod pool;
mod seal;
mod sign;
mod sign_pool;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use secrecy::SecretString;
use tracing::instrument;
use zeroize::Zeroizing;

pub use eddsa_pool::Ed25519Pair;
pub use error::{HsmError, HsmErrorKind, triage};
pub use pool::PoolSnapshot;
pub use seal::{SealInput, SealedGcm};
pub use sign::SignAlgorithm;

/// Which token of the module to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token whose `CKA_LABEL` (trailing blanks ignored) is this.
    Label(String),
    /// The token in this slot id.
    Slot(u64),
}

impl fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Label(label) => write!(f, "label {label:?}"),
            Self::Slot(slot) => write!(f, "slot {slot}"),
        }
    }
}

/// How to reach one HSM. `Debug` does not show the PIN.
#[derive(Debug, Clone)]
pub struct HsmSettings {
    /// Inventory id of this HSM, used in logs and metrics.
    pub id: String,
    /// Path of the PKCS#11 module (shared library).
    pub module: PathBuf,
    /// Which token to use.
    pub token: TokenSelector,
    /// User PIN.
    pub pin: SecretString,
    /// Maximum number of sessions in use at once (besides the long-lived login session).
    pub pool_size: usize,
}

/// A pool of sessions on one HSM token. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct HsmPool {
    inner: Arc<pool::Inner>,
}

impl fmt::Debug for HsmPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmPool")
            .field("id", &self.inner.id)
            .field("healthy", &self.inner.is_healthy())
            .finish_non_exhaustive()
    }
}

/// Start-up attempts before an HSM connection error is final.
const START_ATTEMPTS: u32 = 5;
/// First pause between start-up attempts (doubling).
const START_RETRY_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// Transient at start-up, when several processes share a SoftHSM token directory: a login
/// that races another process gets `CKR_GENERAL_ERROR`, and a token whose files another
/// process is rewriting is briefly not found or reads as `CKR_USER_PIN_NOT_INITIALIZED`. A retry
/// succeeds; a token that is really absent or uninitialized is still reported, after the
/// retries (about 1.5 s).
fn is_transient_at_start(e: &HsmError) -> bool {
    let source = match e {
        HsmError::LoginFailed { source } | HsmError::Pkcs11 { source, .. } => source,
        HsmError::TokenNotFound { .. } => return true,
        _ => return false,
    };
    matches!(
        source,
        cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::GeneralError
                | cryptoki::error::RvError::UserPinNotInitialized,
            _
        )
    )
}

impl HsmPool {
    /// Loads the module, finds the token, logs in with the user PIN and opens the long-lived
    /// session that keeps the login alive.
    ///
    /// # Errors
    /// [`HsmError::ModuleLoad`], [`HsmError::TokenNotFound`], [`HsmError::LoginFailed`], or
    /// [`HsmError::Pkcs11`] for other PKCS#11 failures.
    #[instrument(skip_all, fields(hsm = %settings.id))]
    pub async fn connect(settings: HsmSettings) -> Result<Self, HsmError> {
        let HsmSettings {
            id,
            module,
            token,
            pin,
            pool_size,
        } = settings;
        // A login racing another process's login or write on the same token (replicas sharing
        // a SoftHSM token directory) fails now and then with CKR_GENERAL_ERROR: retry start-up
        // a few times with backoff, saying so, before giving up.
        let mut backoff = START_RETRY_BACKOFF;
        let mut attempt = 1;
        loop {
            let (id, module, token, pin) = (id.clone(), module.clone(), token.clone(), pin.clone());
            let result = tokio::task::spawn_blocking(move || {
                pool::Inner::connect_blocking(id, &module, token, pin, pool_size)
            })
            .await?;
            match result {
                Ok(inner) => {
                    return Ok(Self {
                        inner: Arc::new(inner),
                    });
                }
                Err(e) if attempt < START_ATTEMPTS && is_transient_at_start(&e) => {
                    tracing::warn!(error = %e, attempt, retry_in = ?backoff,
                        "HSM start-up failed, possibly transiently; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Inventory id of this HSM.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// `len` random bytes from the HSM's generator.
    ///
    /// # Errors
    /// [`HsmError::InvalidRequest`] when `len` does not fit a `CK_ULONG`,
    /// [`HsmError::Unavailable`] when the device is gone, [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, len))]
    pub async fn generate_random(&self, len: usize) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let len = u32::try_from(len).map_err(|_| HsmError::InvalidRequest {
            reason: "random length too large",
        })?;
        self.inner
            .run(move |cx| {
                let mut out = Zeroizing::new(vec![0; len as usize]);
                cx.session
                    .generate_random_slice(&mut out)
                    .map_err(HsmError::ck("C_GenerateRandom"))?;
                Ok(out)
            })
            .await
    }

    /// Creates an AES-256 token key labelled `label`: private, sensitive, never extractable,
    /// usable for encrypt/decrypt only, with a random `CKA_ID`.
    ///
    /// # Errors
    /// [`HsmError::AlreadyExists`] when an object with that label exists,
    /// [`HsmError::Unavailable`] when the device is gone, [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, label))]
    pub async fn create_aes_key(&self, label: &str) -> Result<(), HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                let _serialized = cx.create_lock();
                if !ops::find_labelled(cx.session, &label)?.is_empty() {
                    return Err(HsmError::AlreadyExists {
                        label: label.clone(),
                    });
                }
                ops::generate_aes_key(cx.session, &label)
            })
            .await
    }

    /// Whether an AES key labelled `label` exists.
    ///
    /// # Errors
    /// [`HsmError::Unavailable`] when the device is gone, [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, label))]
    pub async fn key_exists(&self, label: &str) -> Result<bool, HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| match cx.key(&label) {
                Ok(_) => Ok(true),
                Err(HsmError::KeyNotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            })
            .await
    }

    /// Destroys every object labelled `label` (crypto-shredding).
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`] when there is none, [`HsmError::Unavailable`] when the
    /// device is gone, [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, label))]
    pub async fn destroy_key(&self, label: &str) -> Result<(), HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                let objects = ops::find_labelled(cx.session, &label)?;
                if objects.is_empty() {
                    ops::probe_token(cx.ctx, cx.slot)?;
                    return Err(HsmError::KeyNotFound {
                        label: label.clone(),
                    });
                }
                let result = ops::destroy(cx.session, &objects);
                cx.forget_key(&label);
                result
            })
            .await
    }

    /// AES-256-GCM under the key labelled `label`, 128-bit tag; returns ciphertext || tag.
    /// The IV must never repeat under one key: take it from [`HsmPool::generate_random`]. The
    /// key service seals with [`HsmPool::seal_gcm`] instead, which draws the IV in the same call.
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`], [`HsmError::Unavailable`] when the device is gone,
    /// [`HsmError::Pkcs11`] otherwise (e.g. `CKR_DATA_LEN_RANGE`).
    #[instrument(skip_all, fields(hsm = %self.inner.id, label, len = plaintext.len()))]
    pub async fn encrypt_gcm(
        &self,
        label: &str,
        iv: [u8; 12],
        aad: Vec<u8>,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<Vec<u8>, HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                cx.with_key(&label, |key| {
                    ops::encrypt_gcm(cx.session, key, iv, &aad, &plaintext)
                })
            })
            .await
    }

    /// Reverses [`HsmPool::encrypt_gcm`].
    ///
    /// # Errors
    /// [`HsmError::DecryptFailed`] when the tag does not verify (wrong key, IV, AAD, or a
    /// modified ciphertext), [`HsmError::KeyNotFound`], [`HsmError::Unavailable`] when the
    /// device is gone, [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, label, len = ciphertext.len()))]
    pub async fn decrypt_gcm(
        &self,
        label: &str,
        iv: [u8; 12],
        aad: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                cx.with_key(&label, |key| {
                    ops::decrypt_gcm(cx.ctx, cx.slot, cx.session, key, (&iv, &aad), &ciphertext)
                })
            })
            .await
    }

    /// Health probe: session and token info on the long-lived session. When the device is
    /// gone (or was), drains the pool and re-initializes; `Ok` means the pool serves again.
    ///
    /// # Errors
    /// [`HsmError::Unavailable`] while the device cannot be reached.
    #[instrument(skip_all, fields(hsm = %self.inner.id))]
    pub async fn check(&self) -> Result<(), HsmError> {
        self.inner.check().await
    }

    /// Sessions handed out right now (for metrics).
    #[must_use]
    pub fn sessions_in_use(&self) -> usize {
        self.inner.in_use()
    }

    /// Sessions in use and idle, waits for a session and failures by PKCS#11 return code.
    #[must_use]
    pub fn snapshot(&self) -> PoolSnapshot {
        self.inner.snapshot()
    }

    /// Last known health, without I/O.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.inner.is_healthy()
    }

    /// Stops handing out sessions: waiting and later calls answer [`HsmError::Unavailable`].
    /// Sessions close when the last clone of the pool is dropped.
    pub fn close(&self) {
        self.inner.close();
    }
}

fn non_empty(label: &str) -> Result<String, HsmError> {
    if label.is_empty() {
        return Err(HsmError::InvalidRequest {
            reason: "empty key label",
        });
    }
    Ok(label.to_owned())
}

#[cfg(test)]
mod start_retry_tests {
    use cryptoki::context::Function;
    use cryptoki::error::{Error as CkError, RvError};

    use super::*;

    #[test]
    fn only_a_general_error_or_a_missing_token_at_start_is_retried() {
        let general = CkError::Pkcs11(RvError::GeneralError, Function::Login);
        assert!(is_transient_at_start(&HsmError::LoginFailed {
            source: general
        }));
        let general = CkError::Pkcs11(RvError::GeneralError, Function::OpenSession);
        assert!(is_transient_at_start(&HsmError::Pkcs11 {
            op: "open session",
            source: general
        }));
        let wrong_pin = CkError::Pkcs11(RvError::PinIncorrect, Function::Login);
        assert!(!is_transient_at_start(&HsmError::LoginFailed {
            source: wrong_pin
        }));
        assert!(is_transient_at_start(&HsmError::TokenNotFound {
            selector: "label \"x\"".into()
        }));
    }
}
