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
async fn hsm_ed25519_signatures_verify_with_ring_and_pairs_are_named_by_id() {
    let token = SoftHsmToken::new("eddsa").unwrap();
    let pool = HsmPool::connect(token.hsm_settings("test")).await.unwrap();
    let label = "kb:audit:checkpoint";
    assert!(pool.ed25519_pairs(label).await.unwrap().is_empty());
    let first = pool.generate_ed25519_pair(label).await.unwrap();
    let second = pool.generate_ed25519_pair(label).await.unwrap();
    assert_ne!(first.id, second.id, "each pair gets its own CKA_ID");
    assert_ne!(first.public, second.public);
    let mut listed = pool.ed25519_pairs(label).await.unwrap();
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    let mut want = vec![first.clone(), second.clone()];
    want.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        listed, want,
        "both pairs listed, each with its own public half"
    );

    let msg = b"keybroker.example/audit\n3\nAAAA\n".to_vec();
    for pair in [&first, &second] {
        let sig = pool
            .sign_eddsa(label, pair.id.clone(), msg.clone())
            .await
            .unwrap();
        let key = UnparsedPublicKey::new(&ED25519, pair.public.unwrap());
        key.verify(&msg, &sig).unwrap();
        assert!(key.verify(b"another message", &sig).is_err());
    }
    // The first pair's signature does not verify under the second's key: the id picks the key.
    let sig = pool
        .sign_eddsa(label, first.id.clone(), msg.clone())
        .await
        .unwrap();
    assert!(
        UnparsedPublicKey::new(&ED25519, second.public.unwrap())
            .verify(&msg, &sig)
            .is_err()
    );
    assert!(matches!(
        pool.sign_eddsa(label, b"absent".to_vec(), msg.clone())
            .await,
        Err(HsmError::KeyNotFound { .. })
    ));
    assert!(matches!(
        pool.sign_eddsa("kb:audit:absent", first.id.clone(), msg)
            .await,
        Err(HsmError::KeyNotFound { .. })
    ));
}
