//! [`HsmPool`] calls on the key pairs of SIGN-purpose keys: create a version's pair, sign with
//! it, read its public key. A version's pair is addressed by its label `kb:<name>:v<n>`; a
//! label that names more than one private key is refused rather than guessed.

use cryptoki::object::ObjectClass;
use tracing::instrument;

use super::sign::{self, SignAlgorithm};
use super::{HsmError, HsmPool, non_empty, ops};

impl HsmPool {
    /// Creates the signing key pair of `alg` labelled `label` (private half sensitive, never
    /// extractable, sign only).
    ///
    /// # Errors
    /// [`HsmError::AlreadyExists`] when an object with that label exists,
    /// [`HsmError::Unavailable`] when the device is gone, [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, label, ?alg))]
    pub async fn create_sign_pair(&self, label: &str, alg: SignAlgorithm) -> Result<(), HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                let _serialized = cx.create_lock();
                if !ops::find_labelled(cx.session, &label)?.is_empty() {
                    return Err(HsmError::AlreadyExists {
                        label: label.clone(),
                    });
                }
                sign::generate(cx.session, alg, &label)
            })
            .await
    }

    /// Whether the private half of a signing pair of `alg` labelled `label` exists.
    ///
    /// # Errors
    /// [`HsmError::Unavailable`] when the device is gone, [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, label))]
    pub async fn sign_pair_exists(
        &self,
        label: &str,
        alg: SignAlgorithm,
    ) -> Result<bool, HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                Ok(sign::find_one(cx.session, ObjectClass::PRIVATE_KEY, alg, &label)?.is_some())
            })
            .await
    }

    /// Signs `input` with the private key of `alg` labelled `label`: for ECDSA `input` is a
    /// digest and the result raw `r || s`; for Ed25519 the message and a 64-byte signature.
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`], [`HsmError::InvalidRequest`] when several keys carry the
    /// label, [`HsmError::Unavailable`] when the device is gone, [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, label, len = input.len()))]
    pub async fn sign_with(
        &self,
        label: &str,
        alg: SignAlgorithm,
        input: Vec<u8>,
    ) -> Result<Vec<u8>, HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                let Some(key) = sign::find_one(cx.session, ObjectClass::PRIVATE_KEY, alg, &label)?
                else {
                    ops::probe_token(cx.ctx, cx.slot)?;
                    return Err(HsmError::KeyNotFound {
                        label: label.clone(),
                    });
                };
                sign::sign(cx.session, alg, key, &input)
            })
            .await
    }

    /// The public key of the pair labelled `label`: the uncompressed SEC1 point (P-256) or the
    /// 32-byte key (Ed25519).
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`], [`HsmError::Unavailable`], [`HsmError::Pkcs11`].
    #[instrument(skip_all, fields(hsm = %self.inner.id, label))]
    pub async fn sign_public_key(
        &self,
        label: &str,
        alg: SignAlgorithm,
    ) -> Result<Vec<u8>, HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                let Some(key) = sign::find_one(cx.session, ObjectClass::PUBLIC_KEY, alg, &label)?
                else {
                    ops::probe_token(cx.ctx, cx.slot)?;
                    return Err(HsmError::KeyNotFound {
                        label: label.clone(),
                    });
                };
                sign::public_key(cx.session, alg, key)
            })
            .await
    }
}
