//! The recipient-release format against the shared vectors in clients/testdata/release: the
//! pinned `info` bytes, keys sealed by this crate (`sealed-by-rust.json`, made by the ignored
//! test below) and by the Python client's PyCA/OpenSSL HPKE (`sealed-by-python.json`, made by
//! `generate.py` there). The Python suite checks the same files, so each opens what the other
//! sealed.

use std::path::PathBuf;

use keybroker_client::release::{self, ReleaseOp, SUITE_X25519_SHA256_AES256GCM};
use serde_json::{Value, json};

/// `info(GenerateDataKey, "models/confidential", 1, "l-1", 1)`; clients/python/tests pins the
/// same value.
const PINNED_INFO: &str = "6b657962726f6b65722f68706b652d72656c656173652f7631\
                           c9b96787075517ffd84ab8ea04311dbce9cfc0bba29a116fc5370effbdcc6230";

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/release")
}

fn op(name: &str) -> anyhow::Result<ReleaseOp> {
    match name {
        "GenerateDataKey" => Ok(ReleaseOp::GenerateDataKey),
        "Decrypt" => Ok(ReleaseOp::Decrypt),
        other => anyhow::bail!("unknown op {other}"),
    }
}

fn field<'a>(v: &'a Value, k: &str) -> anyhow::Result<&'a str> {
    v[k].as_str()
        .ok_or_else(|| anyhow::anyhow!("vector field {k} missing"))
}

#[test]
fn info_is_pinned_across_clients() {
    let info = release::info(
        ReleaseOp::GenerateDataKey,
        "models/confidential",
        1,
        "l-1",
        SUITE_X25519_SHA256_AES256GCM,
    );
    assert_eq!(hex::encode(info), PINNED_INFO);
}

#[test]
fn keys_sealed_by_either_client_open_here() -> anyhow::Result<()> {
    for file in ["sealed-by-rust.json", "sealed-by-python.json"] {
        let doc: Value = serde_json::from_slice(&std::fs::read(dir().join(file))?)?;
        let vectors = doc["vectors"].as_array().cloned().unwrap_or_default();
        assert!(vectors.len() >= 3, "{file}: too few vectors");
        for v in &vectors {
            let version = u32::try_from(v["version"].as_u64().unwrap_or(u64::MAX))?;
            let suite = u8::try_from(v["suite"].as_u64().unwrap_or(u64::MAX))?;
            let info = release::info(
                op(field(v, "op")?)?,
                field(v, "key")?,
                version,
                field(v, "lease_id")?,
                suite,
            );
            assert_eq!(hex::encode(&info), field(v, "info")?, "{file}: {v}");
            let secret = hex::decode(field(v, "recipient_secret")?)?;
            assert_eq!(
                hex::encode(release::public_key(&secret)?),
                field(v, "recipient_public")?
            );
            let sealed = hex::decode(field(v, "sealed")?)?;
            assert_eq!(sealed.len(), release::SEALED_DATA_KEY_LEN);
            let opened = release::open(&secret, &info, &sealed)?;
            assert_eq!(
                hex::encode(opened.as_slice()),
                field(v, "data_key")?,
                "{file}"
            );
            // Bound to its call: the same bytes do not open as another lease's key.
            let other = release::info(ReleaseOp::Decrypt, "other", version, "l-x", suite);
            assert!(release::open(&secret, &other, &sealed).is_err());
        }
    }
    Ok(())
}

/// Writes sealed-by-rust.json: `cargo test -p keybroker-client --test release_vectors --
/// --ignored`. Fresh randomness each run (HPKE), so only run it on purpose.
#[test]
#[ignore = "regenerates clients/testdata/release/sealed-by-rust.json"]
fn regenerate_sealed_by_rust() -> anyhow::Result<()> {
    let cases = [
        ("GenerateDataKey", "models/confidential", 1u32, "lease-0001"),
        (
            "Decrypt",
            "models/confidential",
            3,
            "6f2c1d3e-0b7a-4c59-9a53-2f8e1b7d4c10",
        ),
        ("GenerateDataKey", "datasets/demo", 42, "l-1"),
    ];
    let mut vectors = Vec::new();
    for (i, (name, key, version, lease)) in cases.into_iter().enumerate() {
        let n = u8::try_from(i)?;
        let secret: Vec<u8> = (0..32u8)
            .map(|b| b.wrapping_mul(7).wrapping_add(n))
            .collect();
        let data_key: Vec<u8> = (0..32u8).map(|b| b ^ (0xa0 + n)).collect();
        let public = release::public_key(&secret)?;
        let info = release::info(
            op(name)?,
            key,
            version,
            lease,
            SUITE_X25519_SHA256_AES256GCM,
        );
        let sealed = release::seal(&public, &info, &data_key)?;
        vectors.push(json!({
            "op": name, "key": key, "version": version, "lease_id": lease,
            "suite": SUITE_X25519_SHA256_AES256GCM,
            "recipient_secret": hex::encode(&secret), "recipient_public": hex::encode(public),
            "info": hex::encode(&info), "data_key": hex::encode(&data_key),
            "sealed": hex::encode(&sealed),
        }));
    }
    let doc = json!({
        "note": "sealed by keybroker-client (hpke crate); made by the ignored test in clients/rust/tests/release_vectors.rs",
        "vectors": vectors,
    });
    std::fs::write(
        dir().join("sealed-by-rust.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    Ok(())
}
