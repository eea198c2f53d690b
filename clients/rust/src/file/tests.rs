//! The shared KBEF vectors (clients/testdata/kbef, made by the Python generator) and round
//! trips at segment boundaries.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/kbef")
}

fn decrypt(blob: &[u8], key: &[u8]) -> Result<Vec<u8>, FileFormatError> {
    let mut input = blob;
    let header = read_header(&mut input)?;
    let mut out = Vec::new();
    Decryptor::new(header, key, None)?.decrypt_stream(&mut input, &mut out, &mut |_| {})?;
    Ok(out)
}

#[test]
fn every_shared_vector_opens_or_fails_as_declared() -> anyhow::Result<()> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(testdata().join("vectors.json"))?)?;
    let vectors = manifest["vectors"].as_array().cloned().unwrap_or_default();
    assert!(vectors.len() >= 20, "vectors.json lists too few vectors");
    for v in vectors {
        let name = v["name"].as_str().unwrap_or_default();
        let blob = std::fs::read(testdata().join(v["file"].as_str().unwrap_or_default()))?;
        let key = hex::decode(v["data_key"].as_str().unwrap_or_default())?;
        let got = decrypt(&blob, &key);
        match (v["expect"].as_str(), got) {
            (Some("ok"), Ok(plain)) => {
                let want = std::fs::read(testdata().join(v["plaintext"].as_str().unwrap_or("")))?;
                assert!(plain == want, "{name}: wrong plaintext");
            }
            (Some("integrity"), Err(FileFormatError::Integrity(_) | FileFormatError::Trailing)) => {
            }
            (
                Some("format"),
                Err(
                    FileFormatError::BadMagic
                    | FileFormatError::UnsupportedVersion(_)
                    | FileFormatError::Limit(_)
                    | FileFormatError::Truncated(_),
                ),
            ) => {}
            (want, got) => panic!("{name}: expected {want:?}, got {:?}", got.map(|p| p.len())),
        }
    }
    Ok(())
}

#[test]
fn encryption_with_the_vector_parameters_is_byte_identical_to_python() -> anyhow::Result<()> {
    let blob = std::fs::read(testdata().join("multi.kbef"))?;
    let plain = std::fs::read(testdata().join("multi.plain"))?;
    let mut input = blob.as_slice();
    let header = read_header(&mut input)?;
    let mut out = Vec::new();
    let key: Vec<u8> = (0u8..32).collect();
    encrypt_stream(&mut plain.as_slice(), &mut out, &header, &key, &mut |_| {})?;
    assert!(out == blob, "Rust and Python encryptions differ");
    Ok(())
}

#[test]
fn failed_segment_writes_none_of_its_plaintext() -> anyhow::Result<()> {
    let blob = std::fs::read(testdata().join("tampered-body-byte.kbef"))?;
    let plain = std::fs::read(testdata().join("multi.plain"))?;
    let mut input = blob.as_slice();
    let header = read_header(&mut input)?;
    let mut out = Vec::new();
    let key: Vec<u8> = (0u8..32).collect();
    let r = Decryptor::new(header, &key, None)?.decrypt_stream(&mut input, &mut out, &mut |_| {});
    assert!(matches!(r, Err(FileFormatError::Integrity(1))));
    assert_eq!(out, plain[..4080]);
    Ok(())
}

#[test]
fn round_trips_at_segment_boundaries() -> anyhow::Result<()> {
    let ctx = BTreeMap::from([("a".to_owned(), "1".to_owned())]);
    let header = Header::new(4096, [7; 32], [9; 7], "datasets/demo", &ctx, b"w")?;
    let key = [3u8; 32];
    for n in [0usize, 1, 4079, 4080, 4081, 8160, 8161, 20_000] {
        let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        encrypt_stream(&mut data.as_slice(), &mut out, &header, &key, &mut |_| {})?;
        let segments = n.div_ceil(4080).max(1);
        assert_eq!(
            out.len(),
            header.as_bytes().len() + n + 16 * segments,
            "n={n}"
        );
        assert_eq!(decrypt(&out, &key)?, data, "n={n}");
    }
    Ok(())
}

#[test]
fn expired_lease_stops_decryption() -> anyhow::Result<()> {
    let header = Header::new(4096, [7; 32], [9; 7], "k", &BTreeMap::new(), b"w")?;
    let mut out = Vec::new();
    encrypt_stream(
        &mut [1u8; 100].as_slice(),
        &mut out,
        &header,
        &[0; 32],
        &mut |_| {},
    )?;
    let mut input = out.as_slice();
    let header = read_header(&mut input)?;
    let past = std::time::Instant::now();
    let d = Decryptor::new(header, &[0; 32], Some(past))?;
    let r = d.decrypt_stream(&mut input, &mut Vec::new(), &mut |_| {});
    assert!(matches!(r, Err(FileFormatError::LeaseExpired)));
    Ok(())
}

#[test]
fn header_limits_are_enforced() {
    let ctx = BTreeMap::new();
    assert!(Header::new(4095, [0; 32], [0; 7], "k", &ctx, b"w").is_err());
    assert!(Header::new(MAX_SEGMENT_SIZE + 1, [0; 32], [0; 7], "k", &ctx, b"w").is_err());
    assert!(Header::new(4096, [0; 32], [0; 7], "", &ctx, b"w").is_err());
    assert!(Header::new(4096, [0; 32], [0; 7], &"k".repeat(129), &ctx, b"w").is_err());
    assert!(Header::new(4096, [0; 32], [0; 7], "k", &ctx, &[0; 1025]).is_err());
    let big: BTreeMap<_, _> = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    assert!(Header::new(4096, [0; 32], [0; 7], "k", &big, b"w").is_err());
}

proptest::proptest! {
    #[test]
    fn header_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
        let _ = Header::parse(&bytes);
    }
}
