//! Result types of the client calls, converted from the generated protobuf messages: key
//! material in `Zeroizing` with a redacting `Debug`, times as `time::OffsetDateTime`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use keybroker_proto::v1 as pb;
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// A fresh data key from `GenerateDataKey`: use `plaintext` locally until `expires_at`, then
/// drop it; store `ciphertext` next to the data.
pub struct DataKey {
    /// The 32-byte data key. Zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The data key wrapped under `key_version` (ciphertext envelope v1).
    pub ciphertext: Vec<u8>,
    /// The key version that wrapped it.
    pub key_version: u32,
    /// The lease on the plaintext.
    pub lease_id: String,
    /// When the lease ends and the plaintext must be dropped.
    pub expires_at: Option<OffsetDateTime>,
    /// The lease's length as the broker granted it (for clients that do not trust their clock
    /// to agree with the broker's `expires_at`).
    pub lease_ttl: Option<Duration>,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("plaintext", &"[redacted]")
            .field("ciphertext_len", &self.ciphertext.len())
            .field("key_version", &self.key_version)
            .field("lease_id", &self.lease_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A data key (or small payload) opened by `Decrypt`.
pub struct DecryptedKey {
    /// The plaintext. Zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The key that had wrapped it.
    pub key: String,
    /// The key version that had wrapped it.
    pub key_version: u32,
    /// The lease on the plaintext.
    pub lease_id: String,
    /// When the lease ends and the plaintext must be dropped.
    pub expires_at: Option<OffsetDateTime>,
    /// The lease's length as the broker granted it.
    pub lease_ttl: Option<Duration>,
}

impl fmt::Debug for DecryptedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptedKey")
            .field("plaintext", &"[redacted]")
            .field("key", &self.key)
            .field("key_version", &self.key_version)
            .field("lease_id", &self.lease_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A ciphertext with the key version that made it (`GenerateDataKeyWithoutPlaintext`,
/// `Encrypt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// Ciphertext envelope v1.
    pub ciphertext: Vec<u8>,
    /// The key version used.
    pub key_version: u32,
}

/// The result of `ReEncrypt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReEncrypted {
    /// The new ciphertext, under `key_version`.
    pub ciphertext: Vec<u8>,
    /// The key name.
    pub key: String,
    /// The version the input ciphertext was under.
    pub source_key_version: u32,
    /// The version the new ciphertext is under.
    pub key_version: u32,
}

/// What a key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPurpose {
    /// Envelope encryption (data keys).
    DataKey,
    /// Encrypt/decrypt of small secrets (seal keys).
    Seal,
    /// An AWS KMS external key, served on the XKS proxy API.
    Xks,
    /// Signatures (SIGN keys; `create_key` makes ECDSA P-256, see `create_signing_key`).
    Sign,
    /// Not set, or a value this client does not know.
    Unspecified,
}

impl KeyPurpose {
    /// The name as in the API, without prefix: `DATA_KEY`, `SEAL`, `UNSPECIFIED`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DataKey => "DATA_KEY",
            Self::Seal => "SEAL",
            Self::Xks => "XKS",
            Self::Sign => "SIGN",
            Self::Unspecified => "UNSPECIFIED",
        }
    }

    pub(crate) fn to_pb(self) -> pb::KeyPurpose {
        match self {
            Self::DataKey => pb::KeyPurpose::DataKey,
            Self::Seal => pb::KeyPurpose::Seal,
            Self::Xks => pb::KeyPurpose::Xks,
            Self::Sign => pb::KeyPurpose::Sign,
            Self::Unspecified => pb::KeyPurpose::Unspecified,
        }
    }

    fn from_pb(v: i32) -> Self {
        match pb::KeyPurpose::try_from(v) {
            Ok(pb::KeyPurpose::DataKey) => Self::DataKey,
            Ok(pb::KeyPurpose::Seal) => Self::Seal,
            Ok(pb::KeyPurpose::Xks) => Self::Xks,
            Ok(pb::KeyPurpose::Sign) => Self::Sign,
            _ => Self::Unspecified,
        }
    }
}

/// Lifecycle state of a key or key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Usable.
    Enabled,
    /// Revoked (reversible): every use is denied.
    Disabled,
    /// Waiting to be destroyed (cancellable).
    PendingDestruction,
    /// HSM objects destroyed.
    Destroyed,
    /// Not set, or a value this client does not know.
    Unspecified,
}

impl KeyState {
    /// The name as in the API, without prefix: `ENABLED`, `DISABLED`, ….
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "ENABLED",
            Self::Disabled => "DISABLED",
            Self::PendingDestruction => "PENDING_DESTRUCTION",
            Self::Destroyed => "DESTROYED",
            Self::Unspecified => "UNSPECIFIED",
        }
    }

    fn from_pb(v: i32) -> Self {
        match pb::KeyState::try_from(v) {
            Ok(pb::KeyState::Enabled) => Self::Enabled,
            Ok(pb::KeyState::Disabled) => Self::Disabled,
            Ok(pb::KeyState::PendingDestruction) => Self::PendingDestruction,
            Ok(pb::KeyState::Destroyed) => Self::Destroyed,
            _ => Self::Unspecified,
        }
    }
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVersionInfo {
    /// Version number, from 1.
    pub version: u32,
    /// Its state.
    pub state: KeyState,
    /// When it was created.
    pub created_at: Option<OffsetDateTime>,
}

/// A key as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key name, e.g. `datasets/imagenet-eu`.
    pub name: String,
    /// What the key is for.
    pub purpose: KeyPurpose,
    /// Its state.
    pub state: KeyState,
    /// Labels (feed policy).
    pub labels: BTreeMap<String, String>,
    /// HSM inventory id.
    pub hsm_id: String,
    /// That HSM's jurisdiction, e.g. `EU`.
    pub jurisdiction: String,
    /// That HSM's region.
    pub region: String,
    /// The version new encryptions use.
    pub primary_version: u32,
    /// Oldest version still allowed to decrypt.
    pub min_decryption_version: u32,
    /// All versions.
    pub versions: Vec<KeyVersionInfo>,
    /// When the key was created.
    pub created_at: Option<OffsetDateTime>,
    /// Automatic rotation period; `None` when off.
    pub rotation_period: Option<Duration>,
    /// When the next automatic rotation is due.
    pub next_rotation_time: Option<OffsetDateTime>,
    /// When a key pending destruction loses its HSM objects.
    pub destruction_time: Option<OffsetDateTime>,
}

/// Result of `RevokeLeases`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Unexpired leases the revocation covers.
    pub leases_revoked: u32,
    /// Further releases to the job or principal are denied until then.
    pub revoked_until: Option<OffsetDateTime>,
}

impl From<pb::Key> for KeyInfo {
    fn from(k: pb::Key) -> Self {
        Self {
            name: k.name,
            purpose: KeyPurpose::from_pb(k.purpose),
            state: KeyState::from_pb(k.state),
            labels: k.labels.into_iter().collect(),
            hsm_id: k.hsm_id,
            jurisdiction: k.jurisdiction,
            region: k.region,
            primary_version: k.primary_version,
            min_decryption_version: k.min_decryption_version,
            versions: k
                .versions
                .into_iter()
                .map(|v| KeyVersionInfo {
                    version: v.version,
                    state: KeyState::from_pb(v.state),
                    created_at: v.created_at.and_then(timestamp),
                })
                .collect(),
            created_at: k.created_at.and_then(timestamp),
            rotation_period: k.rotation_period.and_then(|d| Duration::try_from(d).ok()),
            next_rotation_time: k.next_rotation_time.and_then(timestamp),
            destruction_time: k.destruction_time.and_then(timestamp),
        }
    }
}

/// One page of `ListKeys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys on this page.
    pub keys: Vec<KeyInfo>,
    /// Token for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// A protobuf timestamp as `OffsetDateTime`; `None` when out of range.
pub(crate) fn timestamp(ts: prost_types::Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_plaintext() {
        let dk = DataKey {
            plaintext: Zeroizing::new(vec![0xAB; 32]),
            ciphertext: vec![1, 2, 3],
            key_version: 1,
            lease_id: "l-1".into(),
            expires_at: None,
            lease_ttl: None,
        };
        let s = format!("{dk:?}");
        assert!(s.contains("[redacted]") && !s.contains("171"), "{s}");
        let d = DecryptedKey {
            plaintext: Zeroizing::new(vec![0xAB; 32]),
            key: "k".into(),
            key_version: 1,
            lease_id: "l".into(),
            expires_at: None,
            lease_ttl: None,
        };
        assert!(format!("{d:?}").contains("[redacted]"));
    }

    #[test]
    fn converts_key_and_timestamps() {
        let k = pb::Key {
            name: "datasets/demo".into(),
            purpose: pb::KeyPurpose::DataKey as i32,
            state: pb::KeyState::Enabled as i32,
            versions: vec![pb::KeyVersion {
                version: 1,
                state: pb::KeyState::Disabled as i32,
                created_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
            }],
            rotation_period: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
            ..pb::Key::default()
        };
        let info = KeyInfo::from(k);
        assert_eq!(info.purpose, KeyPurpose::DataKey);
        assert_eq!(info.state, KeyState::Enabled);
        assert_eq!(info.versions[0].state, KeyState::Disabled);
        assert_eq!(
            info.versions[0].created_at.map(|t| t.unix_timestamp()),
            Some(1_700_000_000)
        );
        assert_eq!(info.rotation_period, Some(Duration::from_secs(60)));
        assert_eq!(KeyPurpose::from_pb(99), KeyPurpose::Unspecified);
    }
}
