//! Edge validation and conversions between protobuf messages and internal types.

use std::collections::HashMap;
use std::time::Duration;

use keybroker_proto::v1 as pb;
use tonic::Status;

use crate::hsm::SignAlgorithm;
use crate::keys::context::EncryptionContext;
use crate::keys::name::KeyName;
use crate::keys::{KeyService, Lease};
use crate::store::{KeyRecord, KeyState, Purpose, VersionState};

use super::RequestId;
use super::status::{invalid, key_error};

/// Largest ciphertext accepted (an envelope of the largest SEAL payload).
pub(crate) const MAX_CIPHERTEXT: usize = crate::keys::envelope::MAX_ENVELOPE_LEN;
/// Labels per key.
pub(crate) const MAX_LABELS: usize = 32;

pub(crate) fn key_name(name: &str, rid: &RequestId) -> Result<KeyName, Status> {
    KeyName::parse(name).map_err(|e| invalid(format!("key: {e}"), rid))
}

pub(crate) fn context(
    map: HashMap<String, String>,
    rid: &RequestId,
) -> Result<EncryptionContext, Status> {
    KeyService::context(map).map_err(|e| key_error(&e, rid))
}

pub(crate) fn ttl(
    d: Option<prost_types::Duration>,
    rid: &RequestId,
) -> Result<Option<Duration>, Status> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) => {
            Err(invalid("ttl must be positive", rid))
        }
        Some(d) => {
            let secs = u64::try_from(d.seconds).map_err(|_| invalid("ttl out of range", rid))?;
            let nanos = u32::try_from(d.nanos).map_err(|_| invalid("ttl out of range", rid))?;
            Ok(Some(Duration::new(secs, nanos)))
        }
    }
}

/// A rotation period from the wire: unset → unchanged (`None`), zero → off (`Some(None)`).
/// Range checks are the key service's.
pub(crate) fn rotation_period(
    d: Option<prost_types::Duration>,
    rid: &RequestId,
) -> Result<Option<Option<Duration>>, Status> {
    match d {
        None => Ok(None),
        Some(d) if d.seconds == 0 && d.nanos == 0 => Ok(Some(None)),
        Some(d) => {
            let secs = u64::try_from(d.seconds)
                .map_err(|_| invalid("rotation_period must be positive", rid))?;
            let nanos = u32::try_from(d.nanos)
                .map_err(|_| invalid("rotation_period must be positive", rid))?;
            Ok(Some(Some(Duration::new(secs, nanos))))
        }
    }
}

pub(crate) fn ciphertext<'a>(ct: &'a [u8], rid: &RequestId) -> Result<&'a [u8], Status> {
    if ct.is_empty() {
        return Err(invalid("ciphertext is empty", rid));
    }
    if ct.len() > MAX_CIPHERTEXT {
        return Err(invalid(
            format!("ciphertext larger than {MAX_CIPHERTEXT} bytes"),
            rid,
        ));
    }
    Ok(ct)
}

/// The recipient of a sealed release: suite X25519/HKDF-SHA256/AES-256-GCM and a 32-byte
/// public key, or none.
pub(crate) fn recipient(
    r: Option<pb::Recipient>,
    rid: &RequestId,
) -> Result<Option<[u8; 32]>, Status> {
    let Some(r) = r else {
        return Ok(None);
    };
    if r.suite != pb::HpkeSuite::X25519Sha256Aes256gcm as i32 {
        return Err(invalid(
            "recipient.suite: only HPKE_SUITE_X25519_SHA256_AES256GCM is supported",
            rid,
        ));
    }
    let key: [u8; 32] = r
        .public_key
        .as_slice()
        .try_into()
        .map_err(|_| invalid("recipient.public_key: an X25519 key is 32 bytes", rid))?;
    Ok(Some(key))
}

pub(crate) fn algorithm_from_pb(v: i32, rid: &RequestId) -> Result<SignAlgorithm, Status> {
    match pb::SignatureAlgorithm::try_from(v) {
        // Unset: cosign's default.
        Ok(pb::SignatureAlgorithm::Unspecified | pb::SignatureAlgorithm::EcdsaP256) => {
            Ok(SignAlgorithm::EcdsaP256)
        }
        Ok(pb::SignatureAlgorithm::Ed25519) => Ok(SignAlgorithm::Ed25519),
        Err(_) => Err(invalid("unknown signature algorithm", rid)),
    }
}

pub(crate) fn algorithm_to_pb(alg: SignAlgorithm) -> pb::SignatureAlgorithm {
    match alg {
        SignAlgorithm::EcdsaP256 => pb::SignatureAlgorithm::EcdsaP256,
        SignAlgorithm::Ed25519 => pb::SignatureAlgorithm::Ed25519,
    }
}

pub(crate) fn timestamp(unix: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix,
        nanos: 0,
    }
}

pub(crate) fn lease(l: &Lease) -> pb::Lease {
    pb::Lease {
        lease_id: l.id.clone(),
        expires_at: Some(timestamp(l.expires_at)),
        ttl_seconds: l.ttl_secs,
    }
}

pub(crate) fn purpose_from_pb(p: i32, algorithm: i32, rid: &RequestId) -> Result<Purpose, Status> {
    let purpose = match pb::KeyPurpose::try_from(p) {
        Ok(pb::KeyPurpose::DataKey) => Purpose::DataKey,
        Ok(pb::KeyPurpose::Seal) => Purpose::Seal,
        Ok(pb::KeyPurpose::Xks) => Purpose::Xks,
        Ok(pb::KeyPurpose::Sign) => {
            return algorithm_from_pb(algorithm, rid).map(Purpose::Sign);
        }
        _ => {
            return Err(invalid(
                "purpose must be KEY_PURPOSE_DATA_KEY, KEY_PURPOSE_SEAL, KEY_PURPOSE_SIGN or KEY_PURPOSE_XKS",
                rid,
            ));
        }
    };
    if algorithm != 0 {
        return Err(invalid("algorithm is only for KEY_PURPOSE_SIGN keys", rid));
    }
    Ok(purpose)
}

fn purpose_to_pb(p: Purpose) -> pb::KeyPurpose {
    match p {
        Purpose::DataKey => pb::KeyPurpose::DataKey,
        Purpose::Seal => pb::KeyPurpose::Seal,
        Purpose::Xks => pb::KeyPurpose::Xks,
        Purpose::Sign(_) => pb::KeyPurpose::Sign,
    }
}

fn key_state_to_pb(s: KeyState) -> pb::KeyState {
    match s {
        KeyState::Enabled => pb::KeyState::Enabled,
        KeyState::Disabled => pb::KeyState::Disabled,
        KeyState::PendingDestruction => pb::KeyState::PendingDestruction,
        KeyState::Destroyed => pb::KeyState::Destroyed,
    }
}

fn version_state_to_pb(s: VersionState) -> pb::KeyState {
    match s {
        // A reserved version is not usable yet: report it as disabled rather than invent a state.
        VersionState::PendingCreate | VersionState::Disabled => pb::KeyState::Disabled,
        VersionState::Enabled => pb::KeyState::Enabled,
        VersionState::Destroyed => pb::KeyState::Destroyed,
    }
}

pub(crate) fn key(k: &KeyRecord, keys: &KeyService) -> pb::Key {
    let hsm = keys.hsm_info(&k.hsm_id);
    pb::Key {
        name: k.name.clone(),
        purpose: purpose_to_pb(k.purpose).into(),
        algorithm: match k.purpose {
            Purpose::Sign(alg) => algorithm_to_pb(alg).into(),
            _ => 0,
        },
        state: key_state_to_pb(k.state).into(),
        labels: k.labels.clone().into_iter().collect(),
        hsm_id: k.hsm_id.clone(),
        jurisdiction: hsm.map(|h| h.jurisdiction.clone()).unwrap_or_default(),
        region: hsm.map(|h| h.region.clone()).unwrap_or_default(),
        primary_version: k.primary_version().unwrap_or(0),
        min_decryption_version: k.min_decryption_version,
        versions: k
            .versions
            .iter()
            .map(|v| pb::KeyVersion {
                version: v.version,
                state: version_state_to_pb(v.state).into(),
                created_at: Some(timestamp(v.created_at)),
            })
            .collect(),
        created_at: Some(timestamp(k.created_at)),
        rotation_period: k.rotation_period_secs.map(|s| prost_types::Duration {
            seconds: s,
            nanos: 0,
        }),
        next_rotation_time: k.next_rotation_at.map(timestamp),
        destruction_time: k.destroy_after.map(timestamp),
    }
}

/// Label maps are validated like encryption contexts (same syntax and sizes), up to 32 pairs.
pub(crate) fn labels(
    map: HashMap<String, String>,
    rid: &RequestId,
) -> Result<std::collections::BTreeMap<String, String>, Status> {
    if map.len() > MAX_LABELS {
        return Err(invalid(format!("at most {MAX_LABELS} labels"), rid));
    }
    for (k, v) in &map {
        let one = HashMap::from([(k.clone(), v.clone())]);
        KeyService::context(one).map_err(|e| invalid(format!("labels: {e}"), rid))?;
    }
    Ok(map.into_iter().collect())
}
