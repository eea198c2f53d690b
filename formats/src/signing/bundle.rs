//! The signature bundle: a signature with its transparency receipt — the audit record that
//! logs it, that record's RFC 6962 inclusion proof, and the signed checkpoint (C2SP
//! signed-note) the proof leads to. Verifying a bundle needs nothing from the broker: the
//! signature under the public key, then the record under the checkpoint, then the checkpoint
//! under the log's verifier key (the one published out of band, or the bundle's own, trusted
//! on first use). Pure: fetching a receipt from the broker is the client's.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::{FormatError, PublicKey};
use crate::ops::Op;
use crate::tlog::note::{NoteError, VerifierKey, verify_checkpoint};
use crate::tlog::proof::{Hash, ProofError, leaf_hash, verify_inclusion};

/// `mediaType` of a bundle.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.keybroker.signature-bundle.v1+json";

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The signature does not verify (or is malformed), or the key is not usable.
    #[error("signature: {0}")]
    Signature(#[from] FormatError),
    /// The checkpoint or verifier key was refused.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] NoteError),
    /// The record is not in the log under the checkpoint.
    #[error("inclusion proof: {0}")]
    Proof(#[from] ProofError),
    /// The bundle is malformed, or its record does not log this signature.
    #[error("{0}")]
    Mismatch(String),
}

/// The transparency receipt of a signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// Index of the audit record.
    pub index: u64,
    /// The record: the exact canonical JSON whose leaf hash is in the tree.
    pub record: String,
    /// Size of the tree the proof is for (the checkpoint's).
    pub tree_size: u64,
    /// Sibling hashes from the leaf up, hex.
    pub inclusion_proof: Vec<String>,
    /// The signed checkpoint note.
    pub checkpoint: String,
    /// The log's verifier key as the broker gave it (compare with the published one).
    pub vkey: String,
}

impl Receipt {
    /// Verifies the receipt under `vkey` (or its own key when `None`) and returns the record.
    ///
    /// # Errors
    /// [`BundleError`].
    pub fn verify(&self, vkey: Option<&VerifierKey>) -> Result<Value, BundleError> {
        let own;
        let vkey = match vkey {
            Some(k) => k,
            None => {
                own = VerifierKey::parse(&self.vkey)?;
                &own
            }
        };
        let cp = verify_checkpoint(vkey, &self.checkpoint)?;
        if cp.size != self.tree_size {
            return Err(BundleError::Mismatch(
                "the proof is not for the checkpoint's tree size".into(),
            ));
        }
        let proof = self
            .inclusion_proof
            .iter()
            .map(|h| {
                hex::decode(h)
                    .ok()
                    .and_then(|b| Hash::try_from(b.as_slice()).ok())
                    .ok_or_else(|| {
                        BundleError::Mismatch("a proof hash is not 32 bytes of hex".into())
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let leaf = leaf_hash(self.record.as_bytes());
        verify_inclusion(self.index, cp.size, &leaf, &proof, &cp.root)?;
        let record: Value = serde_json::from_str(&self.record)
            .map_err(|_| BundleError::Mismatch("the record is not JSON".into()))?;
        if record.get("index").and_then(Value::as_u64) != Some(self.index) {
            return Err(BundleError::Mismatch("the record's index differs".into()));
        }
        Ok(record)
    }
}

/// A signature over an artifact's SHA-256 digest, with its receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// [`BUNDLE_MEDIA_TYPE`].
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The key's name.
    pub key: String,
    /// The version that signed.
    pub key_version: u32,
    /// `ecdsa-p256` or `ed25519`.
    pub algorithm: String,
    /// PEM of the version's public key.
    pub public_key: String,
    /// Base64 signature (ECDSA: ASN.1 DER over the digest).
    pub signature: String,
    /// `sha256:<hex>` of the artifact.
    pub digest: String,
    /// The transparency receipt.
    pub receipt: Receipt,
}

/// What the record of a signature must say about it.
fn check_record(
    record: &Value,
    op: Op,
    key: &str,
    version: u32,
    digest: &str,
) -> Result<(), BundleError> {
    let field = |path: &[&str]| path.iter().try_fold(record, |v, p| v.get(*p));
    let text = |path: &[&str]| field(path).and_then(Value::as_str);
    let checks = [
        (
            field(&["op"]).and_then(|v| Op::deserialize(v).ok()) == Some(op),
            "operation",
        ),
        (text(&["outcome", "code"]) == Some("ok"), "outcome"),
        (text(&["key_name"]) == Some(key), "key"),
        (
            field(&["key_version"]).and_then(Value::as_u64) == Some(u64::from(version)),
            "key version",
        ),
        (text(&["signed", "digest"]) == Some(digest), "digest"),
    ];
    match checks.iter().find(|(ok, _)| !ok) {
        Some((_, what)) => Err(BundleError::Mismatch(format!(
            "the logged record does not match the signature: {what}"
        ))),
        None => Ok(()),
    }
}

impl Bundle {
    /// Verifies the signature over `digest` (SHA-256 of the artifact) under `key` (the
    /// bundle's own public key when `None`) and the receipt under `vkey` (see
    /// [`Receipt::verify`]); returns the record.
    ///
    /// # Errors
    /// [`BundleError`].
    pub fn verify(
        &self,
        digest: &[u8; 32],
        key: Option<&PublicKey>,
        vkey: Option<&VerifierKey>,
    ) -> Result<Value, BundleError> {
        let own;
        let key = match key {
            Some(k) => k,
            None => {
                own = PublicKey::from_pem(&self.public_key)?;
                &own
            }
        };
        let sig = STANDARD
            .decode(&self.signature)
            .map_err(|_| BundleError::Mismatch("the signature is not base64".into()))?;
        key.verify_digest(digest, &sig)?;
        let label = format!("sha256:{}", hex::encode(digest));
        if self.digest != label {
            return Err(BundleError::Mismatch(
                "the bundle names another digest".into(),
            ));
        }
        let record = self.receipt.verify(vkey)?;
        check_record(&record, Op::Sign, &self.key, self.key_version, &label)?;
        Ok(record)
    }
}

/// Verifies that `receipt` logs a `SignDsse` of `statement` by `key` version `version`.
///
/// # Errors
/// [`BundleError`].
pub fn verify_statement_receipt(
    receipt: &Receipt,
    statement: &[u8],
    (key, version): (&str, u32),
    vkey: Option<&VerifierKey>,
) -> Result<Value, BundleError> {
    use sha2::Digest as _;
    let record = receipt.verify(vkey)?;
    let label = format!("sha256:{}", hex::encode(sha2::Sha256::digest(statement)));
    check_record(&record, Op::SignDsse, key, version, &label)?;
    Ok(record)
}
