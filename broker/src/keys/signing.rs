//! Signing with SIGN-purpose keys: `Sign` (a digest), `SignDsse` (an in-toto Statement as a
//! DSSE envelope) and `GetPublicKey`, plus the HSM objects a SIGN key version consists of.
//!
//! Like a data-key release, a signature passes the catalog's release gate (key and version
//! still enabled, caller not revoked) after the HSM work and before anything is returned; the
//! API layer then appends its audit record before the signature leaves the broker.

use keybroker_formats::signing::format::{self, Algorithm};
use sha2::{Digest as _, Sha256};

use crate::hsm::{HsmError, HsmPool, SignAlgorithm};
use crate::store::{KeyRecord, Purpose, ReleaseGate};

use super::KeyError;
use super::name::KeyName;
use super::service::{Caller, KeyService, check_usable, check_version};
use super::sign_input::{DSSE_PAYLOAD_TYPE, Digest};

/// A signature made by [`KeyService::sign_digest`] or [`KeyService::sign_dsse`].
#[derive(Debug, Clone)]
pub struct Signature {
    /// ECDSA: ASN.1 DER; Ed25519: 64 bytes. For `SignDsse`, the envelope JSON instead.
    pub bytes: Vec<u8>,
    /// Version that signed.
    pub version: u32,
    /// Its algorithm.
    pub algorithm: SignAlgorithm,
    /// Key id of the version (hex SHA-256 of its SubjectPublicKeyInfo DER), for `SignDsse`.
    pub keyid: Option<String>,
}

/// The public half of one version.
#[derive(Debug, Clone)]
pub struct PublicKeyInfo {
    /// Version.
    pub version: u32,
    /// Algorithm.
    pub algorithm: SignAlgorithm,
    /// PEM `PUBLIC KEY`.
    pub pem: String,
    /// Hex SHA-256 of the SubjectPublicKeyInfo DER.
    pub keyid: String,
}

pub(super) fn format_alg(alg: SignAlgorithm) -> Algorithm {
    match alg {
        SignAlgorithm::EcdsaP256 => Algorithm::EcdsaP256,
        SignAlgorithm::Ed25519 => Algorithm::Ed25519,
    }
}

/// Creates the HSM object(s) of a new version of a key of `purpose`.
pub(super) async fn create_object(
    pool: &HsmPool,
    label: &str,
    purpose: Purpose,
) -> Result<(), HsmError> {
    match purpose {
        Purpose::Sign(alg) => pool.create_sign_pair(label, alg).await,
        Purpose::DataKey | Purpose::Seal | Purpose::Xks => pool.create_aes_key(label).await,
    }
}

/// Whether the HSM object of a version of a key of `purpose` exists (crash recovery).
pub(super) async fn object_exists(
    pool: &HsmPool,
    label: &str,
    purpose: Purpose,
) -> Result<bool, HsmError> {
    match purpose {
        Purpose::Sign(alg) => pool.sign_pair_exists(label, alg).await,
        Purpose::DataKey | Purpose::Seal | Purpose::Xks => pool.key_exists(label).await,
    }
}

/// The key's signature algorithm, or why it cannot sign.
fn signing_algorithm(key: &KeyRecord) -> Result<SignAlgorithm, KeyError> {
    check_usable(key, None)?;
    match key.purpose {
        Purpose::Sign(alg) => Ok(alg),
        other => Err(KeyError::Precondition(format!(
            "key purpose is {}, this operation needs a SIGN key",
            other.as_db()
        ))),
    }
}

/// The algorithm and newest enabled version of a usable SIGN key.
fn primary(key: &KeyRecord) -> Result<(SignAlgorithm, u32), KeyError> {
    let alg = signing_algorithm(key)?;
    let version = key
        .primary_version()
        .ok_or_else(|| KeyError::Precondition("key has no enabled version".into()))?;
    Ok((alg, version))
}

impl KeyService {
    /// Signs `input` with `version` and passes the release gate (which re-checks the key and
    /// version states and the caller's revocations).
    async fn sign_raw(
        &self,
        caller: &Caller,
        (name, key): (&KeyName, &KeyRecord),
        (alg, version): (SignAlgorithm, u32),
        input: Vec<u8>,
    ) -> Result<Vec<u8>, KeyError> {
        let pool = &self.hsm_for(key)?.pool;
        let raw = pool.sign_with(&name.hsm_label(version), alg, input).await?;
        let sig = match alg {
            SignAlgorithm::EcdsaP256 => format::ecdsa_der_from_raw(&raw).map_err(|_| {
                KeyError::Hsm(HsmError::InvalidRequest {
                    reason: "the HSM returned a malformed ECDSA signature",
                })
            })?,
            SignAlgorithm::Ed25519 => raw,
        };
        let gate = ReleaseGate {
            key: name.as_str(),
            wrap_version: None,
            open_version: Some(version),
            lease: None,
            who: caller.who(),
            now: self.clock.now(),
        };
        self.release(caller, gate).await?;
        Ok(sig)
    }

    /// Sign: the newest enabled version signs `digest` (ECDSA over the digest, Ed25519 over
    /// the digest bytes).
    ///
    /// # Errors
    /// See [`KeyError`]; `Precondition` for a key that is not a usable SIGN key.
    pub async fn sign_digest(
        &self,
        caller: &Caller,
        key: (&KeyName, &KeyRecord),
        digest: &Digest,
    ) -> Result<Signature, KeyError> {
        let (algorithm, version) = primary(key.1)?;
        let sig = self
            .sign_raw(caller, key, (algorithm, version), digest.bytes.clone())
            .await?;
        Ok(Signature {
            bytes: sig,
            version,
            algorithm,
            keyid: None,
        })
    }

    /// SignDsse: the newest enabled version signs `PAE(application/vnd.in-toto+json,
    /// statement)`; returns the DSSE envelope JSON. The statement must have been validated.
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn sign_dsse(
        &self,
        caller: &Caller,
        key: (&KeyName, &KeyRecord),
        statement: &[u8],
    ) -> Result<Signature, KeyError> {
        let (algorithm, version) = primary(key.1)?;
        // The key id names the version that signs: read it first, from the same version.
        let keyid = self.public_key(key, version).await?.keyid;
        let pae = format::pae(DSSE_PAYLOAD_TYPE, statement);
        let input = match algorithm {
            SignAlgorithm::EcdsaP256 => Sha256::digest(&pae).to_vec(),
            SignAlgorithm::Ed25519 => pae,
        };
        let sig = self
            .sign_raw(caller, key, (algorithm, version), input)
            .await?;
        let envelope = format::Envelope::new(DSSE_PAYLOAD_TYPE, statement, &keyid, &sig);
        let bytes = serde_json::to_vec(&envelope)
            .map_err(|e| KeyError::Invalid(format!("DSSE envelope: {e}")))?;
        Ok(Signature {
            bytes,
            version,
            algorithm,
            keyid: Some(keyid),
        })
    }

    /// GetPublicKey: version `version` (0: the newest enabled one), which must not be
    /// destroyed. Disabled keys and versions still answer: verifiers need old keys.
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn public_key(
        &self,
        (name, key): (&KeyName, &KeyRecord),
        version: u32,
    ) -> Result<PublicKeyInfo, KeyError> {
        let alg = match key.purpose {
            Purpose::Sign(alg) => alg,
            other => {
                return Err(KeyError::Precondition(format!(
                    "key purpose is {}; only SIGN keys have a public key",
                    other.as_db()
                )));
            }
        };
        let version = match version {
            0 => key
                .primary_version()
                .ok_or_else(|| KeyError::Precondition("key has no enabled version".into()))?,
            v => v,
        };
        let record = key.version(version).ok_or_else(|| {
            KeyError::Precondition(format!("key version {version} does not exist"))
        })?;
        if matches!(
            record.state,
            crate::store::VersionState::Destroyed | crate::store::VersionState::PendingCreate
        ) {
            // Same wording as the use checks.
            check_version(key, version, false)?;
        }
        let raw = self
            .hsm_for(key)?
            .pool
            .sign_public_key(&name.hsm_label(version), alg)
            .await?;
        let (der, pem) = format::spki(format_alg(alg), &raw).map_err(|_| {
            KeyError::Hsm(HsmError::InvalidRequest {
                reason: "the HSM returned a malformed public key",
            })
        })?;
        Ok(PublicKeyInfo {
            version,
            algorithm: alg,
            pem,
            keyid: format::keyid(&der),
        })
    }
}
