//! Ed25519 inside the HSM (the audit checkpoint signer): signatures made by SoftHSM verify with
//! an independent implementation (ring), and the private key never leaves.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use keybroker_broker::hsm::{HsmError, HsmPool};
use ring::signature::{ED25519, UnparsedPublicKey};
use softhsm_tests::SoftHsmToken;

#[tokio::test]
async fn hsm_ed25519_signatures_verify_with_ring_and_creation_is_idempotent() {
    let token = SoftHsmToken::new("eddsa").unwrap();
    let pool = HsmPool::connect(token.hsm_settings("test")).await.unwrap();
    assert!(
        pool.create_ed25519_key("kb:audit:checkpoint")
            .await
            .unwrap()
    );
    assert!(
        !pool
            .create_ed25519_key("kb:audit:checkpoint")
            .await
            .unwrap()
    );
    let public = pool
        .ed25519_public_key("kb:audit:checkpoint")
        .await
        .unwrap();
    let msg = b"keybroker.example/audit\n3\nAAAA\n".to_vec();
    let sig = pool
        .sign_eddsa("kb:audit:checkpoint", msg.clone())
        .await
        .unwrap();
    let key = UnparsedPublicKey::new(&ED25519, public);
    key.verify(&msg, &sig).unwrap();
    assert!(key.verify(b"another message", &sig).is_err());
    assert!(matches!(
        pool.sign_eddsa("kb:audit:absent", msg).await,
        Err(HsmError::KeyNotFound { .. })
    ));
}
