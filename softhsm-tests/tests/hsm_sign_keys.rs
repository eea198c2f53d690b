//! SIGN key pairs made by `HsmPool::create_sign_pair`, read back through a raw cryptoki
//! session: the private half is a sensitive, never-extractable token key that signs only; both
//! halves carry the version's label and `destroy_key` removes both.
//!
//! Its own test binary (process) for the reason given in `hsm_key_attributes.rs`: a raw
//! cryptoki context must not race another test's pool finalizing the SoftHSM library.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use anyhow::Context;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use keybroker_broker::hsm::{HsmPool, SignAlgorithm};
use keybroker_client::signing::format::{self, Algorithm, PublicKey};
use sha2::{Digest as _, Sha256};
use softhsm_tests::SoftHsmToken;

#[tokio::test]
async fn sign_pairs_are_sensitive_never_extractable_sign_only_and_destroyed_whole()
-> anyhow::Result<()> {
    let token = SoftHsmToken::new("signattrs")?;
    let pool = HsmPool::connect(token.hsm_settings("test")).await?;
    for (label, alg, fmt) in [
        (
            "kb:sign/p256:v1",
            SignAlgorithm::EcdsaP256,
            Algorithm::EcdsaP256,
        ),
        ("kb:sign/ed:v1", SignAlgorithm::Ed25519, Algorithm::Ed25519),
    ] {
        pool.create_sign_pair(label, alg).await?;
        assert!(
            pool.create_sign_pair(label, alg).await.is_err(),
            "labels are never reused"
        );
        assert!(pool.sign_pair_exists(label, alg).await?);

        // The HSM's signature verifies under the HSM's public key, outside the HSM.
        let digest = Sha256::digest(b"artifact").to_vec();
        let raw = pool.sign_with(label, alg, digest.clone()).await?;
        assert_eq!(raw.len(), 64);
        let (_, pem) = format::spki(fmt, &pool.sign_public_key(label, alg).await?)?;
        let key = PublicKey::from_pem(&pem)?;
        let sig = match alg {
            SignAlgorithm::EcdsaP256 => format::ecdsa_der_from_raw(&raw)?,
            SignAlgorithm::Ed25519 => raw,
        };
        key.verify_digest(&digest, &sig)?;
        assert!(key.verify_digest(&Sha256::digest(b"other"), &sig).is_err());

        let (module, tl, pin, l) = (
            token.module.clone(),
            token.label.clone(),
            token.pin.clone(),
            label.to_owned(),
        );
        tokio::task::spawn_blocking(move || check_attributes(&module, &tl, &pin, &l)).await??;

        pool.destroy_key(label).await?;
        assert!(!pool.sign_pair_exists(label, alg).await?);
        assert!(
            pool.sign_public_key(label, alg).await.is_err(),
            "public half gone too"
        );
    }
    Ok(())
}

fn check_attributes(
    module: &std::path::Path,
    token: &str,
    pin: &str,
    label: &str,
) -> anyhow::Result<()> {
    let ctx = Pkcs11::new(module)?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(e.into()),
    }
    let slot = ctx
        .get_slots_with_token()?
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label() == token))
        .context("token slot")?;
    let session = ctx.open_ro_session(slot)?;
    match session.login(UserType::User, Some(&pin.to_owned().into())) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(e.into()),
    }
    let find = |class| {
        session.find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
    };
    assert_eq!(find(ObjectClass::PUBLIC_KEY)?.len(), 1, "one public half");
    let private = *find(ObjectClass::PRIVATE_KEY)?
        .first()
        .context("private half")?;
    let attrs = session.get_attributes(
        private,
        &[
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Sign,
            AttributeType::Decrypt,
            AttributeType::Derive,
            AttributeType::NeverExtractable,
            AttributeType::AlwaysSensitive,
        ],
    )?;
    let flag = |t: AttributeType| {
        attrs.iter().find_map(|a| match (a, t) {
            (Attribute::Token(v), AttributeType::Token)
            | (Attribute::Private(v), AttributeType::Private)
            | (Attribute::Sensitive(v), AttributeType::Sensitive)
            | (Attribute::Extractable(v), AttributeType::Extractable)
            | (Attribute::Sign(v), AttributeType::Sign)
            | (Attribute::Decrypt(v), AttributeType::Decrypt)
            | (Attribute::Derive(v), AttributeType::Derive)
            | (Attribute::NeverExtractable(v), AttributeType::NeverExtractable)
            | (Attribute::AlwaysSensitive(v), AttributeType::AlwaysSensitive) => Some(*v),
            _ => None,
        })
    };
    for (t, want) in [
        (AttributeType::Token, true),
        (AttributeType::Private, true),
        (AttributeType::Sensitive, true),
        (AttributeType::Extractable, false),
        (AttributeType::Sign, true),
        (AttributeType::Decrypt, false),
        (AttributeType::Derive, false),
        (AttributeType::NeverExtractable, true),
        (AttributeType::AlwaysSensitive, true),
    ] {
        assert_eq!(flag(t), Some(want), "{label} {t:?}");
    }
    let info = session.get_attribute_info(private, &[AttributeType::Value])?;
    assert!(
        matches!(info.as_slice(), [AttributeInfo::Sensitive]),
        "{info:?}"
    );
    Ok(())
}
