//! [`HsmPool`] calls on Ed25519 key pairs (the audit checkpoint signer). A pair is named by its
//! label *and* its `CKA_ID`: several pairs may carry the same label (replicas that raced before
//! the key was recorded), so every use after creation goes by the recorded id, and a lookup that
//! finds more than one object refuses rather than pick one.

use cryptoki::object::ObjectClass;
use tracing::instrument;

use super::{HsmError, HsmPool, eddsa, non_empty, ops};

/// One Ed25519 key pair found on the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ed25519Pair {
    /// Its `CKA_ID` (shared by both halves).
    pub id: Vec<u8>,
    /// The public key, when the public half is on the token.
    pub public: Option<[u8; 32]>,
}

impl HsmPool {
    /// Every Ed25519 private key labelled `label`, with its id and (if present) public half.
    ///
    /// # Errors
    /// [`HsmError::Unavailable`] when the device is gone, [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, label))]
    pub async fn ed25519_pairs(&self, label: &str) -> Result<Vec<Ed25519Pair>, HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                let private = eddsa::find_all(cx.session, ObjectClass::PRIVATE_KEY, &label, None)?;
                let mut out = Vec::with_capacity(private.len());
                for key in private {
                    let id = eddsa::id_of(cx.session, key)?;
                    let public = match eddsa::find_all(
                        cx.session,
                        ObjectClass::PUBLIC_KEY,
                        &label,
                        Some(&id),
                    )?
                    .as_slice()
                    {
                        [one] => Some(eddsa::public_key(cx.session, *one)?),
                        _ => None,
                    };
                    out.push(Ed25519Pair { id, public });
                }
                Ok(out)
            })
            .await
    }

    /// Generates a new Ed25519 token key pair labelled `label` (private half sensitive, never
    /// extractable, sign only) and returns its id and public key. It does not look for an
    /// existing pair: the caller decides, under its own lock, that one is needed.
    ///
    /// # Errors
    /// [`HsmError::Unavailable`] when the device is gone, [`HsmError::Pkcs11`] otherwise
    /// (e.g. a module without CKM_EC_EDWARDS_KEY_PAIR_GEN).
    #[instrument(skip_all, fields(hsm = %self.inner.id, label))]
    pub async fn generate_ed25519_pair(&self, label: &str) -> Result<Ed25519Pair, HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                let _serialized = cx.create_lock();
                let id = eddsa::generate(cx.session, &label)?;
                let public =
                    match eddsa::find_all(cx.session, ObjectClass::PUBLIC_KEY, &label, Some(&id))?
                        .as_slice()
                    {
                        [one] => eddsa::public_key(cx.session, *one)?,
                        _ => {
                            return Err(HsmError::InvalidRequest {
                                reason: "the generated Ed25519 public key is not on the token",
                            });
                        }
                    };
                Ok(Ed25519Pair {
                    id,
                    public: Some(public),
                })
            })
            .await
    }

    /// Signs `msg` with the one Ed25519 private key labelled `label` whose `CKA_ID` is `id`
    /// (CKM_EDDSA, pure Ed25519).
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`] when no such key is on the token,
    /// [`HsmError::InvalidRequest`] when several are, [`HsmError::Unavailable`] when the device
    /// is gone, [`HsmError::Pkcs11`] otherwise.
    #[instrument(skip_all, fields(hsm = %self.inner.id, label, len = msg.len()))]
    pub async fn sign_eddsa(
        &self,
        label: &str,
        id: Vec<u8>,
        msg: Vec<u8>,
    ) -> Result<[u8; 64], HsmError> {
        let label = non_empty(label)?;
        self.inner
            .run(move |cx| {
                let found =
                    eddsa::find_all(cx.session, ObjectClass::PRIVATE_KEY, &label, Some(&id))?;
                let key = match found.as_slice() {
                    [one] => *one,
                    [] => {
                        ops::probe_token(cx.ctx, cx.slot)?;
                        return Err(HsmError::KeyNotFound {
                            label: label.clone(),
                        });
                    }
                    _ => {
                        return Err(HsmError::InvalidRequest {
                            reason: "several Ed25519 private keys carry this label and id",
                        });
                    }
                };
                let sig = eddsa::sign(cx.session, key, &msg)?;
                sig.try_into().map_err(|_| HsmError::InvalidRequest {
                    reason: "Ed25519 signature is not 64 bytes",
                })
            })
            .await
    }
}
