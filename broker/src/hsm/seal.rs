//! Sealing in one trip to the HSM: the GCM IV (and, for a data key, the key itself) drawn
//! from the token's generator and the encryption done under one session checkout. Each
//! [`HsmPool`] call is a hop to a blocking thread and back; GenerateDataKey made three of them
//! in series (data key, IV, encrypt), which under load cost more in thread wake-ups than the
//! PKCS#11 calls themselves.

use tracing::instrument;
use zeroize::Zeroizing;

use super::{HsmError, HsmPool, non_empty, ops};

/// What [`HsmPool::seal_gcm`] encrypts.
pub enum SealInput {
    /// These bytes.
    Given(Zeroizing<Vec<u8>>),
    /// A fresh random secret of this many bytes from the HSM's generator (a data key).
    Fresh(usize),
}

/// What [`HsmPool::seal_gcm`] returns. Its `Debug` shows no plaintext.
pub struct SealedGcm {
    /// The bytes encrypted (the fresh data key, for [`SealInput::Fresh`]).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The IV, fresh from the HSM's generator.
    pub iv: [u8; 12],
    /// Ciphertext || 128-bit tag.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SealedGcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedGcm")
            .field("plaintext", &"[redacted]")
            .field("sealed_len", &self.sealed.len())
            .finish_non_exhaustive()
    }
}

/// Longest fresh secret [`SealInput::Fresh`] draws.
const MAX_FRESH: usize = 1024;

impl HsmPool {
    /// AES-256-GCM under the key labelled `label` with a fresh 96-bit IV from the token's
    /// generator, all in one session checkout.
    ///
    /// # Errors
    /// [`HsmError::InvalidRequest`] for an empty label or an oversized fresh secret,
    /// [`HsmError::KeyNotFound`], [`HsmError::Unavailable`] when the device is gone,
    /// [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, label))]
    pub async fn seal_gcm(
        &self,
        label: &str,
        aad: Vec<u8>,
        input: SealInput,
    ) -> Result<SealedGcm, HsmError> {
        let label = non_empty(label)?;
        if matches!(input, SealInput::Fresh(n) if n == 0 || n > MAX_FRESH) {
            return Err(HsmError::InvalidRequest {
                reason: "fresh secret length out of range",
            });
        }
        self.inner
            .run(move |cx| {
                // The pool may run this again on a fresh session, so `input` is only borrowed.
                let plaintext = match &input {
                    SealInput::Given(p) => p.clone(),
                    SealInput::Fresh(n) => {
                        let mut out = Zeroizing::new(vec![0; *n]);
                        cx.session
                            .generate_random_slice(&mut out)
                            .map_err(HsmError::ck("C_GenerateRandom"))?;
                        out
                    }
                };
                let mut iv = [0u8; 12];
                cx.session
                    .generate_random_slice(&mut iv)
                    .map_err(HsmError::ck("C_GenerateRandom"))?;
                let sealed = cx.with_key(&label, |key| {
                    ops::encrypt_gcm(cx.session, key, iv, &aad, &plaintext)
                })?;
                Ok(SealedGcm {
                    plaintext,
                    iv,
                    sealed,
                })
            })
            .await
    }
}
