//! The HSM ceiling: the broker's envelope calls straight through cryptoki, one session per
//! worker, each call on a blocking thread (as the broker runs them). `datakey` is what the
//! broker's GenerateDataKey asks of the token: `C_GenerateRandom` 32 bytes (the data key) and
//! 12 bytes (the IV), then AES-256-GCM `C_Encrypt` with a header-sized AAD; `decrypt` is one
//! AES-GCM `C_Decrypt`; `encrypt` is an IV plus `C_Encrypt`. The AES key is a token object
//! (like the broker's keys): `--hsm-key-label` names an existing one, otherwise a temporary
//! key is created and destroyed at the end. `sign` is `CKM_ECDSA` over a 32-byte digest with a
//! temporary P-256 token key pair made like a SIGN key's version (destroyed at the end too).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::measure::OpKind;

/// AAD of the size the broker authenticates (envelope header with key name and context).
const AAD: [u8; 64] = [0x41; 64];

/// Where the token is.
#[derive(Debug, Clone)]
pub(crate) struct RawHsmSettings {
    /// PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub(crate) module: PathBuf,
    /// Token label.
    pub(crate) token_label: String,
    /// File holding the user PIN.
    pub(crate) pin_file: PathBuf,
    /// Existing AES key to use instead of a temporary one.
    pub(crate) key_label: Option<String>,
}

/// An open token with one session per worker.
pub(crate) struct RawHsm {
    sessions: Vec<Arc<Mutex<Session>>>,
    key: ObjectHandle,
    /// Set when the key is ours to destroy.
    temporary: bool,
    /// IV and ciphertext opened by every decrypt.
    sealed: ([u8; 12], Vec<u8>),
    /// Temporary P-256 pair (private, public) for `sign`.
    sign_pair: Option<(ObjectHandle, ObjectHandle)>,
}

/// A setup or call failure, as text for the CLI error.
fn ck(what: &'static str) -> impl Fn(CkError) -> String {
    move |e| format!("{what}: {e}")
}

impl RawHsm {
    /// Loads the module, logs in, opens `sessions` sessions and finds or creates the key.
    /// Blocking: call on a blocking thread.
    ///
    /// # Errors
    /// A message naming the failed step.
    pub(crate) fn open(
        settings: &RawHsmSettings,
        sessions: usize,
        sign: bool,
    ) -> Result<Self, String> {
        let pin = std::fs::read_to_string(&settings.pin_file)
            .map_err(|e| format!("cannot read PIN file {}: {e}", settings.pin_file.display()))?;
        let pin = SecretString::from(pin.trim_end_matches(['\n', '\r']).to_owned());
        let ctx = Pkcs11::new(&settings.module)
            .map_err(|e| format!("cannot load {}: {e}", settings.module.display()))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(ck("C_Initialize")(e)),
        }
        let slot = ctx
            .get_slots_with_token()
            .map_err(ck("C_GetSlotList"))?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .is_ok_and(|i| i.label().trim_end() == settings.token_label)
            })
            .ok_or_else(|| format!("no token labelled {:?}", settings.token_label))?;
        let mut opened = Vec::with_capacity(sessions.max(1));
        for _ in 0..sessions.max(1) {
            opened.push(ctx.open_rw_session(slot).map_err(ck("C_OpenSession"))?);
        }
        let first = opened.first().ok_or("no session")?;
        match first.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(ck("C_Login")(e)),
        }
        let (key, temporary) = match &settings.key_label {
            Some(label) => (find_key(first, label)?, false),
            None => (create_key(first)?, true),
        };
        let iv: [u8; 12] = random(first, 12)?
            .as_slice()
            .try_into()
            .map_err(|_| "short IV".to_owned())?;
        let dk = random(first, 32)?;
        let ct = gcm_encrypt(first, key, iv, &dk)?;
        let sign_pair = if sign {
            Some(create_p256_pair(first)?)
        } else {
            None
        };
        Ok(Self {
            sign_pair,
            sessions: opened
                .into_iter()
                .map(|s| Arc::new(Mutex::new(s)))
                .collect(),
            key,
            temporary,
            sealed: (iv, ct),
        })
    }

    /// One operation on the worker's session, on a blocking thread.
    pub(crate) async fn call(&self, op: OpKind, worker: usize) -> Result<(), String> {
        let Some(session) = self.sessions.get(worker % self.sessions.len().max(1)) else {
            return Err("NO_SESSION".into());
        };
        let session = Arc::clone(session);
        let key = match (op, self.sign_pair) {
            (OpKind::Sign, Some((private, _))) => private,
            (OpKind::Sign, None) => return Err("NO_SIGN_KEY".into()),
            (OpKind::Attested | OpKind::Nonce, _) => return Err("UNSUPPORTED_OP".into()),
            _ => self.key,
        };
        let sealed = self.sealed.clone();
        let r = tokio::task::spawn_blocking(move || {
            let s = session.lock().unwrap_or_else(PoisonError::into_inner);
            one_op(&s, key, op, &sealed)
        })
        .await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(match e {
                CkError::Pkcs11(rv, _) => format!("CKR_{rv:?}"),
                other => format!("CRYPTOKI_{other}"),
            }),
            Err(_) => Err("BLOCKING_TASK".into()),
        }
    }

    /// Destroys the temporary key, if one was created. Blocking.
    ///
    /// # Errors
    /// `C_DestroyObject` failures.
    pub(crate) fn close(&self) -> Result<(), String> {
        let Some(s) = self.sessions.first() else {
            return Ok(());
        };
        let s = s.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((private, public)) = self.sign_pair {
            s.destroy_object(private).map_err(ck("C_DestroyObject"))?;
            s.destroy_object(public).map_err(ck("C_DestroyObject"))?;
        }
        if !self.temporary {
            return Ok(());
        }
        s.destroy_object(self.key).map_err(ck("C_DestroyObject"))
    }
}

fn one_op(
    s: &Session,
    key: ObjectHandle,
    op: OpKind,
    sealed: &([u8; 12], Vec<u8>),
) -> Result<(), CkError> {
    match op {
        OpKind::Datakey => {
            let dk = Zeroizing::new(s.generate_random_vec(32)?);
            let iv = s.generate_random_vec(12)?;
            let mut iv: [u8; 12] = iv.try_into().unwrap_or([0; 12]);
            let params = GcmParams::new(&mut iv, &AAD, 128.into())?;
            s.encrypt(&Mechanism::AesGcm(params), key, &dk).map(drop)
        }
        OpKind::Encrypt => {
            let iv = s.generate_random_vec(12)?;
            let mut iv: [u8; 12] = iv.try_into().unwrap_or([0; 12]);
            let params = GcmParams::new(&mut iv, &AAD, 128.into())?;
            s.encrypt(&Mechanism::AesGcm(params), key, &[0x5a; 32])
                .map(drop)
        }
        OpKind::Sign => s.sign(&Mechanism::Ecdsa, key, &[0x5a; 32]).map(drop),
        // Refused in `call`: broker-only operations.
        OpKind::Attested | OpKind::Nonce => Ok(()),
        OpKind::Decrypt => {
            let mut iv = sealed.0;
            let params = GcmParams::new(&mut iv, &AAD, 128.into())?;
            s.decrypt(&Mechanism::AesGcm(params), key, &sealed.1)
                .map(|pt| drop(Zeroizing::new(pt)))
        }
    }
}

fn random(s: &Session, len: u32) -> Result<Zeroizing<Vec<u8>>, String> {
    s.generate_random_vec(len)
        .map(Zeroizing::new)
        .map_err(ck("C_GenerateRandom"))
}

fn gcm_encrypt(s: &Session, key: ObjectHandle, iv: [u8; 12], pt: &[u8]) -> Result<Vec<u8>, String> {
    let mut iv = iv;
    let params = GcmParams::new(&mut iv, &AAD, 128.into()).map_err(ck("GCM params"))?;
    s.encrypt(&Mechanism::AesGcm(params), key, pt)
        .map_err(ck("C_Encrypt"))
}

fn find_key(s: &Session, label: &str) -> Result<ObjectHandle, String> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
    .map_err(ck("C_FindObjects"))?
    .into_iter()
    .next()
    .ok_or_else(|| format!("no AES key labelled {label:?} on the token"))
}

/// An AES-256 token key with the broker's attributes (encrypt/decrypt only, never extractable,
/// never modifiable), so the ceiling is measured on the kind of key the broker uses.
///
/// The template is written twice on purpose, here and in the broker's `hsm/ops.rs`
/// (`generate_aes_key`), attribute for attribute but the random `CKA_ID` the broker adds: it is
/// PKCS#11 (`cryptoki`), which the pure formats crate does not link, and a client never
/// imports the broker. Change both together.
fn create_key(s: &Session) -> Result<ObjectHandle, String> {
    let label = format!("keybroker-bench-{}", uuid::Uuid::new_v4());
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
        Attribute::Label(label.into_bytes()),
    ];
    s.generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(ck("C_GenerateKey"))
}

/// A P-256 token key pair with a SIGN key version's attributes (private half sensitive, never
/// extractable, sign only); returns (private, public).
fn create_p256_pair(s: &Session) -> Result<(ObjectHandle, ObjectHandle), String> {
    // DER of the prime256v1 OID, the CKA_EC_PARAMS value.
    const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let label = format!("keybroker-bench-sign-{}", uuid::Uuid::new_v4()).into_bytes();
    // The broker's template (hsm/sign.rs) but the random CKA_ID: see `create_key`.
    let public = [
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(P256.to_vec()),
        Attribute::Label(label.clone()),
    ];
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Unwrap(false),
        Attribute::Label(label),
    ];
    let (public, private) = s
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .map_err(ck("C_GenerateKeyPair"))?;
    Ok((private, public))
}
