//! The token vanishes at runtime: the pool answers `Unavailable`, reports unhealthy, and serves
//! again by itself once the token is back; a second pool on another token of the same library
//! keeps serving throughout (its sessions are reopened transparently after the re-init).
//!
//! Device loss is simulated with SoftHSM's file backend by moving the token's directory out of
//! the tokendir (`SoftHsmToken::unplug`): key handles then answer `CKR_OBJECT_HANDLE_INVALID`,
//! searches find nothing and `C_GetTokenInfo` answers `CKR_GENERAL_ERROR`, and after
//! `C_Finalize` + `C_Initialize` the token is not listed at all — what a pulled HSM or a lost
//! network HSM looks like. Moving it back (`plug_in`) is the device returning.
//! Its own test binary: it finalizes the process-wide SoftHSM library on purpose.

use keybroker_broker::hsm::{HsmError, HsmPool};
use softhsm_tests::SoftHsmToken;
use zeroize::Zeroizing;

const IV: [u8; 12] = [3; 12];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_token_is_unavailable_and_service_resumes_when_it_returns() -> anyhow::Result<()> {
    let token = SoftHsmToken::new("vanish")?;
    let bystander = SoftHsmToken::new("bystander")?;
    let pool = HsmPool::connect(token.hsm_settings("vanish")).await?;
    let other = HsmPool::connect(bystander.hsm_settings("bystander")).await?;
    pool.create_aes_key("k").await?;
    other.create_aes_key("k").await?;
    let ct = pool
        .encrypt_gcm("k", IV, vec![], Zeroizing::new(b"before".to_vec()))
        .await?;
    pool.check().await?;

    token.unplug()?;
    let gone = pool.decrypt_gcm("k", IV, vec![], ct.clone()).await;
    assert!(
        matches!(gone, Err(HsmError::Unavailable { .. })),
        "{gone:?}"
    );
    assert!(!pool.is_healthy());
    let probe = pool.check().await;
    assert!(
        matches!(probe, Err(HsmError::Unavailable { .. })),
        "{probe:?}"
    );
    let exists = pool.key_exists("k").await;
    assert!(
        matches!(exists, Err(HsmError::Unavailable { .. })),
        "{exists:?}"
    );

    // The other token is untouched: its pool reopens its sessions after the re-init.
    let ct_other = other
        .encrypt_gcm("k", IV, vec![], Zeroizing::new(b"still".to_vec()))
        .await?;
    assert_eq!(
        other
            .decrypt_gcm("k", IV, vec![], ct_other)
            .await?
            .as_slice(),
        b"still"
    );
    assert!(other.is_healthy());

    token.plug_in()?;
    // The health probe re-initializes at once (ordinary calls retry at most every 250 ms).
    pool.check().await?;
    assert!(pool.is_healthy());
    let pt = pool.decrypt_gcm("k", IV, vec![], ct).await?;
    assert_eq!(pt.as_slice(), b"before");
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn ordinary_calls_resume_service_without_a_health_probe() -> anyhow::Result<()> {
    let token = SoftHsmToken::new("resume")?;
    let pool = HsmPool::connect(token.hsm_settings("resume")).await?;
    pool.create_aes_key("k").await?;
    token.unplug()?;
    let gone = pool
        .encrypt_gcm("k", IV, vec![], Zeroizing::new(b"x".to_vec()))
        .await;
    assert!(
        matches!(gone, Err(HsmError::Unavailable { .. })),
        "{gone:?}"
    );
    assert!(!pool.is_healthy());
    token.plug_in()?;
    // Ordinary calls retry the re-initialization at most every 250 ms (paused clock here).
    tokio::time::advance(std::time::Duration::from_millis(300)).await;
    assert!(pool.key_exists("k").await?);
    assert!(pool.is_healthy());
    Ok(())
}
