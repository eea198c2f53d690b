//! `HsmPool` against a real SoftHSM2 token: GCM round trips and failures, key attributes,
//! key lifecycle, connect errors, concurrency, and several pools in one process.

use std::sync::Arc;

use anyhow::Context;
use keybroker_broker::hsm::{HsmError, HsmPool, HsmSettings, TokenSelector};
use softhsm_tests::SoftHsmToken;
use zeroize::Zeroizing;

const IV: [u8; 12] = [7; 12];

async fn pool(prefix: &str) -> anyhow::Result<(SoftHsmToken, HsmPool)> {
    let token = SoftHsmToken::new(prefix)?;
    let pool = HsmPool::connect(token.hsm_settings("test")).await?;
    Ok((token, pool))
}

fn secret(bytes: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(bytes.to_vec())
}

#[tokio::test]
async fn encrypt_then_decrypt_round_trips_with_ciphertext_and_tag() -> anyhow::Result<()> {
    let (_token, pool) = pool("roundtrip").await?;
    pool.create_aes_key("kb:rt:v1").await?;
    let iv: [u8; 12] = pool.generate_random(12).await?.as_slice().try_into()?;
    let ct = pool
        .encrypt_gcm("kb:rt:v1", iv, b"ctx".to_vec(), secret(&[42; 32]))
        .await?;
    assert_eq!(ct.len(), 32 + 16, "ciphertext || 128-bit tag");
    let pt = pool
        .decrypt_gcm("kb:rt:v1", iv, b"ctx".to_vec(), ct)
        .await?;
    assert_eq!(pt.as_slice(), &[42; 32]);
    Ok(())
}

#[tokio::test]
async fn wrong_aad_or_flipped_byte_is_decrypt_failed() -> anyhow::Result<()> {
    let (_token, pool) = pool("tamper").await?;
    pool.create_aes_key("k").await?;
    let ct = pool
        .encrypt_gcm("k", IV, b"aad".to_vec(), secret(b"secret"))
        .await?;
    let wrong_aad = pool.decrypt_gcm("k", IV, b"aaX".to_vec(), ct.clone()).await;
    assert!(
        matches!(wrong_aad, Err(HsmError::DecryptFailed)),
        "{wrong_aad:?}"
    );
    for i in [0, ct.len() - 1] {
        let mut flipped = ct.clone();
        flipped[i] ^= 1;
        let r = pool.decrypt_gcm("k", IV, b"aad".to_vec(), flipped).await;
        assert!(matches!(r, Err(HsmError::DecryptFailed)), "byte {i}: {r:?}");
    }
    let truncated = pool
        .decrypt_gcm("k", IV, b"aad".to_vec(), ct[..8].to_vec())
        .await;
    assert!(
        matches!(truncated, Err(HsmError::DecryptFailed)),
        "{truncated:?}"
    );
    // The session survived the caller errors.
    assert_eq!(
        pool.decrypt_gcm("k", IV, b"aad".to_vec(), ct)
            .await?
            .as_slice(),
        b"secret"
    );
    assert!(pool.is_healthy());
    Ok(())
}

#[tokio::test]
async fn creating_a_key_twice_is_already_exists() -> anyhow::Result<()> {
    let (_token, pool) = pool("twice").await?;
    pool.create_aes_key("dup").await?;
    let again = pool.create_aes_key("dup").await;
    assert!(
        matches!(&again, Err(HsmError::AlreadyExists { label }) if label == "dup"),
        "{again:?}"
    );
    Ok(())
}

#[tokio::test]
async fn destroyed_key_is_key_not_found_on_next_use() -> anyhow::Result<()> {
    let (_token, pool) = pool("destroy").await?;
    assert!(!pool.key_exists("gone").await?);
    pool.create_aes_key("gone").await?;
    assert!(pool.key_exists("gone").await?);
    // Warm the label -> handle cache, then destroy.
    let ct = pool.encrypt_gcm("gone", IV, vec![], secret(b"x")).await?;
    pool.destroy_key("gone").await?;
    let enc = pool.encrypt_gcm("gone", IV, vec![], secret(b"x")).await;
    assert!(matches!(enc, Err(HsmError::KeyNotFound { .. })), "{enc:?}");
    let dec = pool.decrypt_gcm("gone", IV, vec![], ct).await;
    assert!(matches!(dec, Err(HsmError::KeyNotFound { .. })), "{dec:?}");
    assert!(!pool.key_exists("gone").await?);
    let again = pool.destroy_key("gone").await;
    assert!(
        matches!(again, Err(HsmError::KeyNotFound { .. })),
        "{again:?}"
    );
    assert!(pool.is_healthy());
    Ok(())
}

#[tokio::test]
async fn destroy_through_one_pool_is_seen_by_another_pools_cache() -> anyhow::Result<()> {
    let token = SoftHsmToken::new("twopools")?;
    let a = HsmPool::connect(token.hsm_settings("a")).await?;
    let b = HsmPool::connect(token.hsm_settings("b")).await?;
    a.create_aes_key("shared").await?;
    b.encrypt_gcm("shared", IV, vec![], secret(b"x")).await?; // b caches the handle
    a.destroy_key("shared").await?;
    let r = b.encrypt_gcm("shared", IV, vec![], secret(b"x")).await;
    assert!(matches!(r, Err(HsmError::KeyNotFound { .. })), "{r:?}");
    Ok(())
}

#[tokio::test]
async fn wrong_pin_at_connect_is_login_failed_without_the_pin() -> anyhow::Result<()> {
    let token = SoftHsmToken::new("wrongpin")?;
    let mut settings = token.hsm_settings("test");
    settings.pin = "00001111".to_owned().into();
    let err = HsmPool::connect(settings)
        .await
        .err()
        .context("connect must fail")?;
    assert!(matches!(err, HsmError::LoginFailed { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(text.contains("PIN is wrong"), "{text}");
    assert!(!text.contains("00001111"), "{text}");
    Ok(())
}

#[tokio::test]
async fn missing_module_is_module_load() -> anyhow::Result<()> {
    let err = HsmPool::connect(HsmSettings {
        id: "none".into(),
        module: "/nonexistent/libpkcs11.so".into(),
        token: TokenSelector::Label("x".into()),
        pin: "1234".to_owned().into(),
        pool_size: 1,
    })
    .await
    .err()
    .context("connect must fail")?;
    assert!(matches!(err, HsmError::ModuleLoad { .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn unknown_token_is_token_not_found() -> anyhow::Result<()> {
    let token = SoftHsmToken::new("known")?;
    let mut settings = token.hsm_settings("test");
    settings.token = TokenSelector::Label("no-such-token".into());
    let err = HsmPool::connect(settings)
        .await
        .err()
        .context("connect must fail")?;
    assert!(matches!(err, HsmError::TokenNotFound { .. }), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_encrypts_share_a_pool_of_four() -> anyhow::Result<()> {
    let (_token, pool) = pool("concurrent").await?;
    pool.create_aes_key("busy").await?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u8 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let iv = [i; 12];
            let ct = pool
                .encrypt_gcm("busy", iv, vec![i], secret(&[i; 32]))
                .await?;
            let pt = pool.decrypt_gcm("busy", iv, vec![i], ct).await?;
            anyhow::ensure!(pt.as_slice() == [i; 32]);
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    assert!(pool.is_healthy());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pools_on_two_tokens_in_one_process_keep_their_keys_apart() -> anyhow::Result<()> {
    let (_t1, p1) = pool("pair-a").await?;
    let (_t2, p2) = pool("pair-b").await?;
    p1.create_aes_key("same-label").await?;
    p2.create_aes_key("same-label").await?;
    let ct = p1
        .encrypt_gcm("same-label", IV, vec![], secret(b"one"))
        .await?;
    let other = p2.decrypt_gcm("same-label", IV, vec![], ct.clone()).await;
    assert!(matches!(other, Err(HsmError::DecryptFailed)), "{other:?}");
    assert_eq!(
        p1.decrypt_gcm("same-label", IV, vec![], ct)
            .await?
            .as_slice(),
        b"one"
    );
    let pools = Arc::new([p1, p2]);
    for p in pools.iter() {
        p.check().await?;
    }
    Ok(())
}

#[tokio::test]
async fn closed_pool_is_unavailable() -> anyhow::Result<()> {
    let (_token, pool) = pool("closed").await?;
    pool.close();
    let r = pool.generate_random(8).await;
    assert!(matches!(r, Err(HsmError::Unavailable { .. })), "{r:?}");
    Ok(())
}
