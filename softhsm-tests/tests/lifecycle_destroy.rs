//! Scheduled destruction end to end: at the end of the waiting period the broker destroys the
//! HSM object of every version (checked here through PKCS#11 directly), the key is DESTROYED
//! for good — also after a restart — and its name is never reused.
//!
//! Its own test binary on purpose: it opens a raw cryptoki context, which must not race
//! another test's pool finalizing the shared SoftHSM library (see hsm_key_attributes.rs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use keybroker_client::{KeyPurpose, KeyState};
use softhsm_tests::broker::TestBroker;
use tonic::Code;

/// Labels of the objects on the token whose label starts with `prefix`.
fn labels_on_token(
    module: &std::path::Path,
    token: &str,
    pin: &str,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
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
    let mut out = Vec::new();
    for obj in session.find_objects(&[])? {
        for attr in session.get_attributes(obj, &[cryptoki::object::AttributeType::Label])? {
            if let Attribute::Label(l) = attr {
                let l = String::from_utf8_lossy(&l).into_owned();
                if l.starts_with(prefix) {
                    out.push(l);
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn hsm_labels(b: &TestBroker, prefix: &str) -> Vec<String> {
    let (module, label, pin) = (
        b.token.module.clone(),
        b.token.label.clone(),
        b.token.pin.clone(),
    );
    let prefix = prefix.to_owned();
    tokio::task::spawn_blocking(move || labels_on_token(&module, &label, &pin, &prefix))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn destruction_at_the_deadline_shreds_every_version_for_good() {
    let (b, clock) = TestBroker::start_with_clock(
        "allow_short_destruction_wait = true\nmin_destruction_wait = \"5s\"",
    )
    .await
    .unwrap();
    let c = b.client().await.unwrap();
    let ctx = BTreeMap::from([("run".to_owned(), "shred".to_owned())]);
    c.create_key("lc/shred", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await
        .unwrap();
    let v1 = c.generate_data_key("lc/shred", &ctx, None).await.unwrap();
    c.rotate_key("lc/shred").await.unwrap();
    let v2 = c.generate_data_key("lc/shred", &ctx, None).await.unwrap();
    assert_eq!(
        hsm_labels(&b, "kb:lc/shred:").await,
        ["kb:lc/shred:v1", "kb:lc/shred:v2"]
    );
    // Below the configured floor of 5 s: refused.
    let below = c
        .schedule_key_destruction("lc/shred", Some(Duration::from_secs(4)))
        .await;
    assert_eq!(below.unwrap_err().code(), Some(Code::InvalidArgument));
    let k = c
        .schedule_key_destruction("lc/shred", Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(k.state, KeyState::PendingDestruction);
    // One second before the deadline nothing is destroyed.
    clock.advance(4);
    assert_eq!(hsm_labels(&b, "kb:lc/shred:").await.len(), 2);
    assert_eq!(
        c.get_key("lc/shred").await.unwrap().state,
        KeyState::PendingDestruction
    );
    clock.advance(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let k = c.get_key("lc/shred").await.unwrap();
        if k.state == KeyState::Destroyed {
            assert!(k.versions.iter().all(|v| v.state == KeyState::Destroyed));
            break;
        }
        assert!(Instant::now() < deadline, "key not destroyed: {k:?}");
        tokio::task::yield_now().await;
    }
    assert!(hsm_labels(&b, "kb:lc/shred:").await.is_empty());
    let fp = Code::FailedPrecondition;
    for ct in [&v1.ciphertext, &v2.ciphertext] {
        assert_eq!(
            c.decrypt(ct, &ctx, None).await.unwrap_err().code(),
            Some(fp)
        );
    }
    // Destroyed is final; the name is never reused.
    assert_eq!(
        c.enable_key("lc/shred", 0).await.unwrap_err().code(),
        Some(fp)
    );
    assert_eq!(
        c.disable_key("lc/shred", 0).await.unwrap_err().code(),
        Some(fp)
    );
    assert_eq!(
        c.cancel_key_destruction("lc/shred")
            .await
            .unwrap_err()
            .code(),
        Some(fp)
    );
    assert_eq!(
        c.schedule_key_destruction("lc/shred", None)
            .await
            .unwrap_err()
            .code(),
        Some(fp)
    );
    let again = c
        .create_key("lc/shred", KeyPurpose::DataKey, &BTreeMap::new(), None)
        .await;
    assert_eq!(again.unwrap_err().code(), Some(Code::AlreadyExists));

    let b = b.restart().await.unwrap();
    let c = b.client().await.unwrap();
    assert_eq!(
        c.get_key("lc/shred").await.unwrap().state,
        KeyState::Destroyed
    );
    for ct in [&v1.ciphertext, &v2.ciphertext] {
        assert_eq!(
            c.decrypt(ct, &ctx, None).await.unwrap_err().code(),
            Some(fp)
        );
    }
    assert!(hsm_labels(&b, "kb:lc/shred:").await.is_empty());
    let destroyed: Vec<serde_json::Value> = b
        .audit_records()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .filter(|v: &serde_json::Value| v["op"] == "destroy_key")
        .collect();
    assert_eq!(destroyed.len(), 1, "{destroyed:?}");
    assert_eq!(destroyed[0]["key_name"], "lc/shred");
    b.stop().await.unwrap();
}
