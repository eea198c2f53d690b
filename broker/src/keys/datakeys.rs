//! Envelope operations: GenerateDataKey (with and without plaintext), Encrypt, Decrypt,
//! ReEncrypt. Each takes the key record the API layer loaded for policy, checks it, does the
//! HSM work, then passes the catalog's release gate before returning anything. Revocations
//! are checked by the gate itself (in the same statement that records the lease), not by a
//! separate read before: a revoked caller costs one HSM call, every other call one query less.

use std::time::Duration;

use zeroize::Zeroizing;

use crate::hsm::{HsmError, SealInput, SealedGcm};
use crate::store::{KeyRecord, Purpose, ReleaseGate};

use super::KeyError;
use super::context::EncryptionContext;
use super::envelope::{Envelope, header_aad};
use super::name::KeyName;
use super::service::{
    Caller, DATA_KEY_LEN, GCM_LIMIT_REACHED, GCM_RANDOM_IV_LIMIT, KeyService, MAX_SEAL_PLAINTEXT,
    Released, Sealed, check_usable, check_version,
};

/// What `seal` needs besides the plaintext.
struct SealJob<'a> {
    caller: &'a Caller,
    key: &'a KeyRecord,
    name: &'a KeyName,
    ctx: &'a EncryptionContext,
    /// Lease of plaintext released alongside (GenerateDataKey).
    lease: Option<(&'a super::Lease, i64)>,
    /// Version of a ciphertext opened first (ReEncrypt): still checked at the gate.
    opened: Option<u32>,
}

impl KeyService {
    /// Encrypts under the newest enabled version (IV, and for a data key the key itself, drawn
    /// on the HSM in the same call), then passes the gate (which counts the use and records the
    /// lease). Returns the bytes sealed with the envelope.
    async fn seal(
        &self,
        job: SealJob<'_>,
        input: SealInput,
    ) -> Result<(Zeroizing<Vec<u8>>, Sealed), KeyError> {
        let SealJob {
            caller,
            key,
            name,
            ctx,
            lease,
            opened,
        } = job;
        let hsm = self.hsm_for(key)?;
        let version = key
            .primary_version()
            .ok_or_else(|| KeyError::Precondition("key has no enabled version".into()))?;
        let used = key.version(version).map_or(0, |v| v.wrap_count);
        if used >= GCM_RANDOM_IV_LIMIT - 1 {
            return Err(KeyError::Precondition(GCM_LIMIT_REACHED.into()));
        }
        let aad = header_aad(name, version, ctx);
        let SealedGcm {
            plaintext,
            iv,
            sealed,
        } = hsm
            .pool
            .seal_gcm(&name.hsm_label(version), aad, input)
            .await?;
        let record =
            lease.map(|l| Self::lease_record(caller, l, name.as_str(), version, "GenerateDataKey"));
        let gate = ReleaseGate {
            key: name.as_str(),
            wrap_version: Some(version),
            open_version: opened,
            lease: record.as_ref(),
            who: caller.who(),
            now: self.clock.now(),
        };
        let count = self.release(caller, gate).await?;
        if count >= self.settings.rotate_after_wraps && version == key.latest_version() {
            self.spawn_wrap_rotation(name.clone(), version, count);
        }
        let envelope = Envelope {
            key: name.clone(),
            version,
            iv,
            sealed,
        };
        let sealed = Sealed {
            ciphertext: envelope.encode(),
            version,
        };
        Ok((plaintext, sealed))
    }

    /// GenerateDataKey: a fresh data key, its wrapped copy and a lease.
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn generate_data_key(
        &self,
        caller: &Caller,
        (name, key): (&KeyName, &KeyRecord),
        ctx: &EncryptionContext,
        ttl: Option<Duration>,
    ) -> Result<(Released, Sealed), KeyError> {
        check_usable(key, Some(Purpose::DataKey))?;
        let lease = self.lease(ttl)?;
        let job = SealJob {
            caller,
            key,
            name,
            ctx,
            lease: Some((&lease.0, lease.1)),
            opened: None,
        };
        let (plaintext, sealed) = self.seal(job, SealInput::Fresh(DATA_KEY_LEN)).await?;
        Ok((
            Released {
                plaintext,
                key: name.as_str().to_owned(),
                version: sealed.version,
                lease: lease.0,
            },
            sealed,
        ))
    }

    /// GenerateDataKeyWithoutPlaintext.
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn generate_data_key_without_plaintext(
        &self,
        caller: &Caller,
        (name, key): (&KeyName, &KeyRecord),
        ctx: &EncryptionContext,
    ) -> Result<Sealed, KeyError> {
        check_usable(key, Some(Purpose::DataKey))?;
        let job = SealJob {
            caller,
            key,
            name,
            ctx,
            lease: None,
            opened: None,
        };
        let (_, sealed) = self.seal(job, SealInput::Fresh(DATA_KEY_LEN)).await?;
        Ok(sealed)
    }

    /// Encrypt (SEAL keys, at most 64 KiB).
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn encrypt(
        &self,
        caller: &Caller,
        (name, key): (&KeyName, &KeyRecord),
        ctx: &EncryptionContext,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<Sealed, KeyError> {
        if plaintext.is_empty() || plaintext.len() > MAX_SEAL_PLAINTEXT {
            return Err(KeyError::Invalid(format!(
                "plaintext must be 1 to {MAX_SEAL_PLAINTEXT} bytes, got {}",
                plaintext.len()
            )));
        }
        check_usable(key, Some(Purpose::Seal))?;
        let job = SealJob {
            caller,
            key,
            name,
            ctx,
            lease: None,
            opened: None,
        };
        let (_, sealed) = self.seal(job, SealInput::Given(plaintext)).await?;
        Ok(sealed)
    }

    /// Opens an envelope after checking the key and version states (the gate re-checks).
    async fn open(
        &self,
        key: &KeyRecord,
        envelope: &Envelope,
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        // Either purpose: a SEAL payload and a wrapped data key open the same way. An XKS key
        // never opens an envelope: its ciphertexts are AWS KMS's, on the XKS API only.
        check_usable(key, None)?;
        if key.purpose == Purpose::Xks {
            return Err(KeyError::Precondition(
                "key purpose is XKS: it is used on the XKS proxy API only".into(),
            ));
        }
        if matches!(key.purpose, Purpose::Sign(_)) {
            return Err(KeyError::Precondition(
                "key purpose is SIGN; it opens no ciphertext".into(),
            ));
        }
        check_version(key, envelope.version, true)?;
        self.hsm_for(key)?
            .pool
            .decrypt_gcm(
                &envelope.key.hsm_label(envelope.version),
                envelope.iv,
                envelope.aad(ctx),
                envelope.sealed.clone(),
            )
            .await
            .map_err(|e| match e {
                HsmError::DecryptFailed => KeyError::DecryptFailed,
                other => KeyError::Hsm(other),
            })
    }

    /// Decrypt: plaintext under a lease.
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn decrypt(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        envelope: &Envelope,
        ctx: &EncryptionContext,
        ttl: Option<Duration>,
    ) -> Result<Released, KeyError> {
        let (lease, issued) = self.lease(ttl)?;
        let plaintext = self.open(key, envelope, ctx).await?;
        let name = envelope.key.as_str();
        let record =
            Self::lease_record(caller, (&lease, issued), name, envelope.version, "Decrypt");
        let gate = ReleaseGate {
            key: name,
            wrap_version: None,
            open_version: Some(envelope.version),
            lease: Some(&record),
            who: caller.who(),
            now: self.clock.now(),
        };
        self.release(caller, gate).await?;
        Ok(Released {
            plaintext,
            key: name.to_owned(),
            version: envelope.version,
            lease,
        })
    }

    /// ReEncrypt: to the newest version; the plaintext never leaves the broker.
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn re_encrypt(
        &self,
        caller: &Caller,
        key: &KeyRecord,
        envelope: &Envelope,
        ctx: &EncryptionContext,
    ) -> Result<(String, u32, Sealed), KeyError> {
        let plaintext = self.open(key, envelope, ctx).await?;
        let job = SealJob {
            caller,
            key,
            name: &envelope.key,
            ctx,
            lease: None,
            opened: Some(envelope.version),
        };
        let (_, sealed) = self.seal(job, SealInput::Given(plaintext)).await?;
        Ok((envelope.key.as_str().to_owned(), envelope.version, sealed))
    }
}
