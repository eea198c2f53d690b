//! The key versions the broker creates are HSM objects that can never leave the token.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a failure is the test failing"
)]

use std::collections::BTreeMap;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use keybroker_client::KeyPurpose;
use softhsm_tests::broker::TestBroker;

#[tokio::test]
async fn key_versions_are_sensitive_non_extractable_token_objects() {
    let b = TestBroker::start().await.unwrap();
    let c = b.client().await.unwrap();
    c.create_key(
        "datasets/sensitive",
        KeyPurpose::DataKey,
        &BTreeMap::new(),
        None,
    )
    .await
    .unwrap();
    c.rotate_key("datasets/sensitive").await.unwrap();

    let module = b.token.module.clone();
    let label = b.token.label.clone();
    let pin = b.token.pin.clone();
    tokio::task::spawn_blocking(move || {
        let p11 = Pkcs11::new(&module).unwrap();
        // Another context in this process may have initialized the library already.
        let _ = p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        let slot = p11
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| {
                p11.get_token_info(*s)
                    .map(|t| t.label() == label)
                    .unwrap_or(false)
            })
            .unwrap();
        let session = p11.open_ro_session(slot).unwrap();
        // The broker's sessions in this process already logged the token in.
        match session.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => panic!("login: {e}"),
        }
        for v in [1, 2] {
            let name = format!("kb:datasets/sensitive:v{v}");
            let objs = session
                .find_objects(&[Attribute::Label(name.clone().into_bytes())])
                .unwrap();
            assert_eq!(objs.len(), 1, "{name}");
            let attrs = session
                .get_attributes(
                    objs[0],
                    &[
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::Token,
                    ],
                )
                .unwrap();
            assert!(
                attrs.contains(&Attribute::Sensitive(true)),
                "{name}: {attrs:?}"
            );
            assert!(
                attrs.contains(&Attribute::Extractable(false)),
                "{name}: {attrs:?}"
            );
            assert!(attrs.contains(&Attribute::Token(true)), "{name}: {attrs:?}");
            // The value itself is never readable.
            let value = session
                .get_attributes(objs[0], &[AttributeType::Value])
                .unwrap();
            assert!(
                !value.iter().any(|a| matches!(a, Attribute::Value(_))),
                "{name}: value readable"
            );
        }
    })
    .await
    .unwrap();
    b.stop().await.unwrap();
}
