//! The PKCS#11 calls themselves: token discovery, login, key lookup/creation/destruction and
//! AES-GCM. Everything here blocks; the pool runs it on `spawn_blocking` threads only.

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::TokenSelector;
use super::error::HsmError;

/// GCM tag length in bits (the maximum, 16 bytes).
const TAG_BITS: u64 = 128;
/// Length of the random `CKA_ID` given to new keys.
const KEY_ID_LEN: u32 = 16;

/// Finds the slot holding the token named by `selector`.
pub(crate) fn find_token(ctx: &Pkcs11, selector: &TokenSelector) -> Result<Slot, HsmError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(HsmError::ck("C_GetSlotList"))?;
    let found = match selector {
        TokenSelector::Slot(id) => slots.into_iter().find(|s| s.id() == *id),
        TokenSelector::Label(label) => slots.into_iter().find(|s| {
            // A slot whose token cannot be read is skipped, not fatal: another may match.
            ctx.get_token_info(*s)
                .is_ok_and(|info| info.label().trim_end() == label.as_str())
        }),
    };
    found.ok_or_else(|| HsmError::TokenNotFound {
        selector: selector.to_string(),
    })
}

/// Logs the user in. A login another pool of this process already holds is fine: PKCS#11
/// login state is per application and token.
pub(crate) fn login(session: &Session, pin: &SecretString) -> Result<(), HsmError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(
            source @ CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
                _,
            ),
        ) => Err(HsmError::LoginFailed { source }),
        Err(source) => Err(HsmError::ck("C_Login")(source)),
    }
}

/// Fails with the triaged error when the token cannot be read (used before answering
/// "not found", so a vanished token is not mistaken for a missing key).
pub(crate) fn probe_token(ctx: &Pkcs11, slot: Slot) -> Result<(), HsmError> {
    ctx.get_token_info(slot)
        .map(drop)
        .map_err(HsmError::ck("C_GetTokenInfo"))
}

/// Every object carrying `label`.
pub(crate) fn find_labelled(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, HsmError> {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .map_err(HsmError::ck("C_FindObjects"))
}

/// The AES secret key carrying `label`, if any.
pub(crate) fn find_aes_key(
    session: &Session,
    label: &str,
) -> Result<Option<ObjectHandle>, HsmError> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(HsmError::ck("C_FindObjects"))?;
    Ok(found.into_iter().next())
}

/// Generates an AES-256 token key that can only encrypt and decrypt, and never leaves the HSM.
///
/// `keybroker bench --target raw-hsm` creates its keys with the same template (but the id) in
/// the CLI's `bench/raw_hsm.rs`: PKCS#11 is not in the pure formats crate, and the CLI never
/// imports the broker. Change both together.
pub(crate) fn generate_aes_key(session: &Session, label: &str) -> Result<(), HsmError> {
    let id = session
        .generate_random_vec(KEY_ID_LEN)
        .map_err(HsmError::ck("C_GenerateRandom"))?;
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Modifiable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id),
    ];
    session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map(drop)
        .map_err(HsmError::ck("C_GenerateKey"))
}

/// Destroys the given objects.
pub(crate) fn destroy(session: &Session, objects: &[ObjectHandle]) -> Result<(), HsmError> {
    for object in objects {
        session
            .destroy_object(*object)
            .map_err(HsmError::ck("C_DestroyObject"))?;
    }
    Ok(())
}

/// AES-GCM encryption with a 128-bit tag; returns ciphertext || tag.
pub(crate) fn encrypt_gcm(
    session: &Session,
    key: ObjectHandle,
    iv: [u8; 12],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let mut iv = iv;
    let params =
        GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(HsmError::ck("GCM params"))?;
    session
        .encrypt(&Mechanism::AesGcm(params), key, plaintext)
        .map_err(HsmError::ck("C_Encrypt"))
}

/// AES-GCM decryption of ciphertext || tag; a tag mismatch is [`HsmError::DecryptFailed`].
///
/// SoftHSM answers a tag mismatch with `CKR_GENERAL_ERROR` (others say
/// `CKR_ENCRYPTED_DATA_INVALID`). `CKR_GENERAL_ERROR` also means "device gone", so it is only
/// read as a failed tag once `C_GetTokenInfo` proved the token is still there.
pub(crate) fn decrypt_gcm(
    ctx: &Pkcs11,
    slot: Slot,
    session: &Session,
    key: ObjectHandle,
    gcm: (&[u8; 12], &[u8]),
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let (iv, aad) = gcm;
    let mut iv = *iv;
    let params =
        GcmParams::new(&mut iv, aad, TAG_BITS.into()).map_err(HsmError::ck("GCM params"))?;
    match session.decrypt(&Mechanism::AesGcm(params), key, ciphertext) {
        Ok(plaintext) => Ok(Zeroizing::new(plaintext)),
        Err(CkError::Pkcs11(RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange, _)) => {
            Err(HsmError::DecryptFailed)
        }
        Err(CkError::Pkcs11(RvError::GeneralError, _)) => {
            probe_token(ctx, slot)?;
            Err(HsmError::DecryptFailed)
        }
        Err(source) => Err(HsmError::ck("C_Decrypt")(source)),
    }
}
