//! The typed audit record and its canonical JSON encoding (sorted keys, no whitespace).
//!
//! Every field is a name, an id, a code or a short reason: there is no field that could hold key
//! bytes (plain or wrapped), a PIN or a token, so a record cannot leak them by construction.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::Digest as _;

use super::AuditError;

/// Version of the record schema, written in every record.
pub const FORMAT_VERSION: u32 = 1;
/// Largest encoded record; larger ones are refused (and the operation with them). Shared with
/// the auditors' tile reader, which refuses larger ones too.
pub use keybroker_formats::tlog::tiles::MAX_RECORD_BYTES;
/// An identity field whose JSON encoding is longer than this many bytes is cut
/// ([`bound_identity`]), so that any request the API accepts makes a record within
/// [`MAX_RECORD_BYTES`] (the encryption context alone may take about 12 KiB).
pub const MAX_IDENTITY_FIELD: usize = 128;
/// What a cut identity field keeps of the original: at most this many bytes, encoded.
const CUT_PREFIX: usize = 64;
/// Marks a cut identity field; followed by 16 hex digits of the SHA-256 of the whole value.
pub const CUT_MARKER: &str = "\u{2026}sha256:";

/// The operation a record is about: the one operation list, shared with clients (who read
/// records) and with policy (whose key actions are a part of it).
pub use keybroker_formats::ops::Op;

/// The API surface a call came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Surface {
    /// The gRPC API.
    Grpc,
    /// The Vault/OpenBao transit-compatible HTTPS endpoint.
    Transit,
    /// The AWS KMS External Key Store proxy API.
    Xks,
}

impl Surface {
    /// `grpc`, `transit` or `xks`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Transit => "transit",
            Self::Xks => "xks",
        }
    }
}

/// Whether the request was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The operation was allowed (it may still have failed: see the outcome).
    Allow,
    /// The operation was refused.
    Deny,
}

/// Who called, as far as the identity layer established it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditPrincipal {
    /// Token issuer.
    pub issuer: String,
    /// Token subject.
    pub subject: String,
    /// SPIFFE ID, when the subject is one.
    pub spiffe_id: Option<String>,
    /// Kubernetes namespace.
    pub namespace: Option<String>,
    /// Kubernetes service account.
    pub service_account: Option<String>,
    /// Training job id.
    pub job: Option<String>,
    /// Caller's region, when known.
    pub region: Option<String>,
    /// SHA-256 fingerprint of the client certificate (mTLS), when there is one.
    pub cert_fingerprint: Option<String>,
}

impl From<&crate::identity::Principal> for AuditPrincipal {
    /// Every field bounded by [`bound_identity`]: identity values come from the caller's
    /// token, and a record must not outgrow the cap because a name is long.
    fn from(p: &crate::identity::Principal) -> Self {
        let opt = |v: &Option<String>| v.as_deref().map(bound_identity);
        Self {
            issuer: bound_identity(&p.issuer),
            subject: bound_identity(&p.subject),
            spiffe_id: opt(&p.spiffe_id),
            namespace: opt(&p.namespace),
            service_account: opt(&p.service_account),
            job: opt(&p.job_id),
            region: opt(&p.region),
            cert_fingerprint: opt(&p.cert_fingerprint),
        }
    }
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn encoded_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// `value` when its JSON encoding fits [`MAX_IDENTITY_FIELD`] bytes; otherwise its longest
/// prefix (whole characters) whose encoding fits 64 bytes, then [`CUT_MARKER`] and the first
/// 16 hex digits of the SHA-256 of the whole value — enough to tell two long values apart
/// and to match one against a token an auditor holds.
#[must_use]
pub fn bound_identity(value: &str) -> String {
    if value.chars().map(encoded_len).sum::<usize>() <= MAX_IDENTITY_FIELD {
        return value.to_owned();
    }
    let mut used = 0;
    let prefix: String = value
        .chars()
        .take_while(|c| {
            used += encoded_len(*c);
            used <= CUT_PREFIX
        })
        .collect();
    let digest = sha2::Sha256::digest(value.as_bytes());
    format!("{prefix}{CUT_MARKER}{}", hex::encode(&digest[..8]))
}

/// The result as the caller saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// `"ok"` or the gRPC code name (`"permission_denied"`, …).
    pub code: String,
}

/// One audit record. The log assigns `index`; everything else is filled by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Schema version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Position in the log (0-based), assigned on append.
    pub index: u64,
    /// RFC 3339 UTC time of the decision.
    pub time: String,
    /// Request id (also on the gRPC response).
    pub request_id: String,
    /// Broker replica that served the request.
    pub replica_id: String,
    /// Operation.
    pub op: Op,
    /// Caller, absent when authentication failed.
    pub principal: Option<AuditPrincipal>,
    /// Key name, when the request named (or the ciphertext identified) one.
    pub key_name: Option<String>,
    /// Key version used.
    pub key_version: Option<u32>,
    /// HSM inventory id.
    pub hsm_id: Option<String>,
    /// Jurisdiction of that HSM.
    pub hsm_jurisdiction: Option<String>,
    /// Encryption context, sorted.
    pub encryption_context: BTreeMap<String, String>,
    /// SHA-256 (hex) of the policy that decided; empty until the policy layer lands.
    pub policy_sha256: String,
    /// Allow or deny.
    pub decision: Decision,
    /// Why, in short safe words (the status message for refusals).
    pub reasons: Vec<String>,
    /// What the caller got.
    pub outcome: Outcome,
    /// Lease id of released key material.
    pub lease_id: Option<String>,
    /// When that lease ends (unix seconds): with the other fields, what the catalog's lease
    /// row holds, so the row can be rebuilt from the log (absent on records without a lease).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<i64>,
    /// The API surface the call came through.
    pub surface: Surface,
    /// What AWS KMS said about an XKS call (absent on other surfaces).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xks: Option<XksFacts>,
    /// What a signature (Sign, SignDsse) was made over: the record is its transparency-log
    /// entry. Absent on other records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed: Option<SignedFacts>,
    /// What an attestation result presented with a DataKeys call said (or, for a refused one,
    /// the verifier it named); never the token, nonce or runtime data. Absent on other calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationAudit>,
}

/// The attestation facts of a call (docs/attestation.md), as far as they were established.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AttestationAudit {
    /// The configured verifier that signed the result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifier: Option<String>,
    /// Its claim profile (`ear`, `intel-trust-authority`, `azure-attestation`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// `sev-snp`, `tdx`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tee: Option<String>,
    /// Launch measurement / MRTD, lower-case hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// Any debug indicator set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    /// The verifier's TCB verdict (`""` when its profile has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcb_status: Option<String>,
    /// Seconds between the result's issue and its use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    /// `evidence` or `result`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce_binding: Option<String>,
    /// SHA-256 (hex) of the raw recipient public key the data key was sealed to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_sha256: Option<String>,
}

/// What a SIGN key signed, as its audit record names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SignedFacts {
    /// The digest signed, `alg:hex` (Sign: the artifact's; SignDsse: the statement's SHA-256).
    pub digest: String,
    /// Artifact name (Sign).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_name: Option<String>,
    /// Media type (Sign), when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The statement's predicate type (SignDsse).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicate_type: Option<String>,
    /// In-toto subjects: name and `alg:hex` digests.
    pub subjects: Vec<SignedSubject>,
    /// The signature algorithm (`ecdsa-p256` or `ed25519`), once a key signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
}

/// One subject of a signature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SignedSubject {
    /// Name.
    pub name: String,
    /// `alg:hex` digests.
    pub digests: Vec<String>,
}

/// The `requestMetadata` of an XKS call as AWS KMS sent it (each value cut like an identity
/// field, [`bound_identity`]), with the key store and credential that authenticated it. Never
/// the plaintext; the AAD only by length and hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct XksFacts {
    /// The key store's URI prefix.
    pub key_store: String,
    /// The SigV4 access key id of the request (not secret; never the secret key).
    pub access_key_id: Option<String>,
    /// `kmsRequestId`: correlates with the caller's CloudTrail event.
    pub kms_request_id: Option<String>,
    /// `kmsOperation` (e.g. `Encrypt`, `GenerateDataKey`, `CreateKey`).
    pub kms_operation: Option<String>,
    /// `awsPrincipalArn`: who called AWS KMS.
    pub aws_principal_arn: Option<String>,
    /// `kmsKeyArn`: the KMS key backed by this external key.
    pub kms_key_arn: Option<String>,
    /// `kmsViaService`: the AWS service that called KMS on the principal's behalf.
    pub kms_via_service: Option<String>,
    /// `awsSourceVpc`.
    pub aws_source_vpc: Option<String>,
    /// `awsSourceVpce`.
    pub aws_source_vpce: Option<String>,
    /// Bytes of additional authenticated data.
    pub aad_len: Option<u32>,
    /// SHA-256 (hex) of that AAD, so an auditor holding the KMS encryption context can match it.
    pub aad_sha256: Option<String>,
}

impl AuditRecord {
    /// A record for `op` now, with every optional field empty.
    #[must_use]
    pub fn new(op: Op, request_id: String, replica_id: String) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            index: 0,
            time: now_rfc3339(),
            request_id,
            replica_id,
            op,
            principal: None,
            key_name: None,
            key_version: None,
            hsm_id: None,
            hsm_jurisdiction: None,
            encryption_context: BTreeMap::new(),
            policy_sha256: String::new(),
            decision: Decision::Deny,
            reasons: Vec::new(),
            outcome: Outcome {
                code: String::new(),
            },
            lease_id: None,
            lease_expires_at: None,
            surface: Surface::Grpc,
            xks: None,
            signed: None,
            attestation: None,
        }
    }

    /// Canonical JSON (RFC 8785 style for this schema: object keys sorted by code point, no
    /// insignificant whitespace, integers only), at most [`MAX_RECORD_BYTES`].
    ///
    /// # Errors
    /// [`AuditError::RecordTooLarge`], or [`AuditError::Encode`] (not expected for this type).
    pub fn to_canonical_json(&self) -> Result<Vec<u8>, AuditError> {
        // Through `Value`, sorted explicitly at every level: another crate in the build (Cedar)
        // turns on serde_json's `preserve_order`, which makes `Map` keep insertion order.
        let mut value = serde_json::to_value(self).map_err(AuditError::Encode)?;
        value.sort_all_objects();
        let bytes = serde_json::to_vec(&value).map_err(AuditError::Encode)?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(AuditError::RecordTooLarge { len: bytes.len() });
        }
        Ok(bytes)
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn sample() -> AuditRecord {
        let mut r = AuditRecord::new(Op::GenerateDataKey, "rid-1".into(), "replica-a".into());
        r.time = "2026-11-25T21:00:00Z".into();
        r.index = 7;
        r.principal = Some(AuditPrincipal {
            issuer: "https://issuer".into(),
            subject: "system:serviceaccount:ml:trainer".into(),
            namespace: Some("ml".into()),
            ..AuditPrincipal::default()
        });
        r.key_name = Some("datasets/a".into());
        r.key_version = Some(2);
        r.encryption_context.insert("zeta".into(), "1".into());
        r.encryption_context
            .insert("alpha".into(), "\u{e9}\"x".into());
        r.decision = Decision::Allow;
        r.outcome.code = "ok".into();
        r
    }

    fn keys_sorted(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                let keys: Vec<&String> = m.keys().collect();
                keys.windows(2).all(|w| w[0] < w[1]) && m.values().all(keys_sorted)
            }
            serde_json::Value::Array(a) => a.iter().all(keys_sorted),
            _ => true,
        }
    }

    #[test]
    fn canonical_json_has_sorted_keys_and_no_whitespace() {
        let bytes = sample().to_canonical_json().unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with("{\"decision\":\"allow\",\"encryption_context\":{\"alpha\""));
        assert!(!text.contains(": ") && !text.contains('\n'));
        // Key order is checked in the raw text, not through a re-parse that might reorder.
        let mut last = 0;
        for key in [
            "\"decision\"",
            "\"encryption_context\"",
            "\"format_version\"",
            "\"hsm_id\"",
            "\"index\"",
            "\"key_name\"",
            "\"lease_id\"",
            "\"op\"",
            "\"outcome\"",
            "\"policy_sha256\"",
            "\"principal\"",
            "\"reasons\"",
            "\"replica_id\"",
            "\"request_id\"",
            "\"time\"",
        ] {
            let at = text.find(key).unwrap();
            assert!(at > last || last == 0, "{key} out of order in {text}");
            last = at;
        }
        let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(keys_sorted(&parsed));
    }

    #[test]
    fn canonical_json_is_deterministic() {
        let a = sample().to_canonical_json().unwrap();
        let b = sample().to_canonical_json().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn records_over_16_kib_are_refused() {
        let mut r = sample();
        r.reasons = vec!["x".repeat(MAX_RECORD_BYTES)];
        assert!(matches!(
            r.to_canonical_json(),
            Err(AuditError::RecordTooLarge { .. })
        ));
    }

    #[test]
    fn time_is_rfc3339_utc() {
        let r = AuditRecord::new(Op::GetKey, String::new(), String::new());
        assert!(
            time::OffsetDateTime::parse(&r.time, &time::format_description::well_known::Rfc3339)
                .is_ok()
        );
        assert!(r.time.ends_with('Z'));
    }
}
