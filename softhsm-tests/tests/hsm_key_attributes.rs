//! Key objects made by `HsmPool::create_aes_key`, read back through a raw cryptoki session.
//!
//! Its own test binary (process) on purpose: a raw cryptoki context bypasses the pool's
//! library lifecycle lock, and under plain `cargo test` another test's pool may finalize and
//! re-initialize the shared SoftHSM library (to see its new token) while a raw call runs —
//! SoftHSM does not survive `C_Finalize` racing a call on another thread.

use anyhow::Context;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType};
use cryptoki::session::UserType;
use keybroker_broker::hsm::HsmPool;
use softhsm_tests::SoftHsmToken;

#[tokio::test]
async fn created_key_is_sensitive_never_extractable_and_encrypt_decrypt_only() -> anyhow::Result<()>
{
    let token = SoftHsmToken::new("attrs")?;
    let pool = HsmPool::connect(token.hsm_settings("test")).await?;
    pool.create_aes_key("kb:attrs:v1").await?;
    let label = token.label.clone();
    let pin = token.pin.clone();
    let module = token.module.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        check_key_attributes(&module, &label, &pin)
    })
    .await??;
    Ok(())
}

fn check_key_attributes(module: &std::path::Path, label: &str, pin: &str) -> anyhow::Result<()> {
    {
        // A raw cryptoki context of its own; the library is already initialized by the pool.
        let ctx = Pkcs11::new(module)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(e.into()),
        }
        let slot = ctx
            .get_slots_with_token()?
            .into_iter()
            .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label() == label))
            .context("token slot")?;
        let session = ctx.open_ro_session(slot)?;
        match session.login(UserType::User, Some(&pin.to_owned().into())) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(e.into()),
        }
        let key = *session
            .find_objects(&[Attribute::Label(b"kb:attrs:v1".to_vec())])?
            .first()
            .context("key object")?;
        let attrs = session.get_attributes(
            key,
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Wrap,
                AttributeType::Unwrap,
                AttributeType::Sign,
                AttributeType::Derive,
                AttributeType::ValueLen,
                AttributeType::Id,
            ],
        )?;
        let flag = |t: AttributeType| {
            attrs.iter().find_map(|a| match (a, t) {
                (Attribute::Token(v), AttributeType::Token)
                | (Attribute::Private(v), AttributeType::Private)
                | (Attribute::Sensitive(v), AttributeType::Sensitive)
                | (Attribute::Extractable(v), AttributeType::Extractable)
                | (Attribute::Encrypt(v), AttributeType::Encrypt)
                | (Attribute::Decrypt(v), AttributeType::Decrypt)
                | (Attribute::Wrap(v), AttributeType::Wrap)
                | (Attribute::Unwrap(v), AttributeType::Unwrap)
                | (Attribute::Sign(v), AttributeType::Sign)
                | (Attribute::Derive(v), AttributeType::Derive) => Some(*v),
                _ => None,
            })
        };
        assert_eq!(flag(AttributeType::Token), Some(true));
        assert_eq!(flag(AttributeType::Private), Some(true));
        assert_eq!(flag(AttributeType::Sensitive), Some(true));
        assert_eq!(flag(AttributeType::Extractable), Some(false));
        assert_eq!(flag(AttributeType::Encrypt), Some(true));
        assert_eq!(flag(AttributeType::Decrypt), Some(true));
        for t in [
            AttributeType::Wrap,
            AttributeType::Unwrap,
            AttributeType::Sign,
            AttributeType::Derive,
        ] {
            assert_eq!(flag(t), Some(false), "{t:?}");
        }
        assert!(
            attrs
                .iter()
                .any(|a| matches!(a, Attribute::ValueLen(l) if u64::from(*l) == 32))
        );
        assert!(
            attrs
                .iter()
                .any(|a| matches!(a, Attribute::Id(id) if id.len() == 16))
        );
        // CKA_VALUE cannot be read.
        let info = session.get_attribute_info(key, &[AttributeType::Value])?;
        assert!(
            matches!(info.as_slice(), [AttributeInfo::Sensitive]),
            "{info:?}"
        );
        let value = session.get_attributes(key, &[AttributeType::Value])?;
        assert!(value.is_empty(), "CKA_VALUE must not be returned");
        Ok(())
    }
}
