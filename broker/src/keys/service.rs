//! Data-key and catalog operations: the one place that turns a request into HSM calls.
//!
//! Every operation re-reads the key's state from the catalog, so a disabled key or version is
//! refused on the next request; the HSM layer is never asked to use a key the catalog has not
//! just allowed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::hsm::{HsmError, HsmPool};
use crate::store::{
    KeyRecord, KeyState, LeaseRecord, NewKey, Purpose, Store, StoreError, VersionState,
};

use super::KeyError;
use super::context::EncryptionContext;
use super::envelope::{Envelope, header_aad};
use super::name::KeyName;

/// Length of a data key.
pub const DATA_KEY_LEN: usize = 32;
/// Largest payload `Encrypt` accepts.
pub const MAX_SEAL_PLAINTEXT: usize = 64 * 1024;
/// NIST SP 800-38D: at most 2^32 random-IV GCM encryptions per key.
pub const GCM_RANDOM_IV_LIMIT: u64 = 1 << 32;

/// One HSM of the inventory as the key service sees it.
#[derive(Debug, Clone)]
pub struct HsmHandle {
    /// The session pool.
    pub pool: HsmPool,
    /// Jurisdiction of the HSM (`EU`, …).
    pub jurisdiction: String,
    /// Region or site.
    pub region: String,
}

/// Settings of the key service.
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// HSM jurisdictions keys may live in.
    pub allowed_jurisdictions: Vec<String>,
    /// Lease when the caller asks for none.
    pub default_lease_ttl: Duration,
    /// Longest lease.
    pub max_lease_ttl: Duration,
    /// Rotate a version after this many encryptions.
    pub rotate_after_wraps: u64,
}

/// Who asked, for leases.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token issuer.
    pub issuer: String,
    /// Subject.
    pub subject: String,
    /// Job id from verified identity.
    pub job_id: Option<String>,
}

/// A lease handed out with plaintext.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Id.
    pub id: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Seconds.
    pub ttl_secs: u32,
}

/// Released plaintext with its lease.
pub struct Released {
    /// Key material or payload; zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Key name.
    pub key: String,
    /// Version used.
    pub version: u32,
    /// Lease covering the plaintext.
    pub lease: Lease,
}

/// A wrapped data key (or sealed payload).
#[derive(Debug, Clone)]
pub struct Sealed {
    /// Envelope bytes.
    pub ciphertext: Vec<u8>,
    /// Version used.
    pub version: u32,
}

/// The key service.
#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn Store>,
    hsms: Arc<BTreeMap<String, HsmHandle>>,
    settings: Arc<KeySettings>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("hsms", &self.hsms.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl KeyService {
    /// Builds the service over a catalog and the opened HSMs.
    pub fn new(
        store: Arc<dyn Store>,
        hsms: BTreeMap<String, HsmHandle>,
        settings: KeySettings,
    ) -> Self {
        Self {
            store,
            hsms: Arc::new(hsms),
            settings: Arc::new(settings),
        }
    }

    /// The HSMs, for health probes.
    pub fn hsms(&self) -> impl Iterator<Item = &HsmHandle> {
        self.hsms.values()
    }

    /// The catalog, for health probes.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The HSM holding `key`, after the residency guard.
    fn hsm_for(&self, key: &KeyRecord) -> Result<&HsmHandle, KeyError> {
        let hsm = self.hsms.get(&key.hsm_id).ok_or_else(|| {
            KeyError::Precondition(format!("HSM {} is not configured", key.hsm_id))
        })?;
        self.residency(&key.hsm_id, hsm)?;
        Ok(hsm)
    }

    fn residency(&self, id: &str, hsm: &HsmHandle) -> Result<(), KeyError> {
        if self
            .settings
            .allowed_jurisdictions
            .iter()
            .any(|j| j == &hsm.jurisdiction)
        {
            Ok(())
        } else {
            Err(KeyError::Residency(format!(
                "HSM {id} is in jurisdiction {}, not in allowed_jurisdictions",
                hsm.jurisdiction
            )))
        }
    }

    /// The key, if it exists, is enabled and (when `purpose` is given) has that purpose.
    async fn usable_key(
        &self,
        name: &KeyName,
        purpose: Option<Purpose>,
    ) -> Result<KeyRecord, KeyError> {
        let key = self
            .store
            .get_key(name.as_str())
            .await?
            .ok_or(KeyError::NotFound)?;
        match key.state {
            KeyState::Enabled => {}
            KeyState::Disabled => return Err(KeyError::Precondition("key is disabled".into())),
            KeyState::PendingDestruction => {
                return Err(KeyError::Precondition("key is pending destruction".into()));
            }
            KeyState::Destroyed => return Err(KeyError::Precondition("key is destroyed".into())),
        }
        if let Some(purpose) = purpose.filter(|p| *p != key.purpose) {
            let want = match purpose {
                Purpose::DataKey => "DATA_KEY",
                Purpose::Seal => "SEAL",
            };
            return Err(KeyError::Precondition(format!(
                "key purpose is {}, this operation needs {want}",
                key.purpose.as_db()
            )));
        }
        Ok(key)
    }

    fn lease(&self, ttl: Option<Duration>) -> Result<(Lease, i64), KeyError> {
        let ttl = ttl.unwrap_or(self.settings.default_lease_ttl);
        if ttl.is_zero() {
            return Err(KeyError::Invalid("ttl must be positive".into()));
        }
        let ttl = ttl.min(self.settings.max_lease_ttl);
        let ttl_secs = u32::try_from(ttl.as_secs().max(1)).unwrap_or(u32::MAX);
        let issued = now();
        Ok((
            Lease {
                id: uuid::Uuid::new_v4().to_string(),
                expires_at: issued + i64::from(ttl_secs),
                ttl_secs,
            },
            issued,
        ))
    }

    fn lease_record(
        caller: &Caller,
        lease: &Lease,
        issued_at: i64,
        key: &str,
        version: u32,
        op: &'static str,
    ) -> LeaseRecord {
        LeaseRecord {
            lease_id: lease.id.clone(),
            key_name: key.to_owned(),
            version,
            op,
            issuer: caller.issuer.clone(),
            subject: caller.subject.clone(),
            job_id: caller.job_id.clone(),
            issued_at,
            expires_at: lease.expires_at,
        }
    }

    /// Encrypts `plaintext` under the newest enabled version of `key`, counting the use (and
    /// recording `lease`, when plaintext is released alongside) before returning.
    async fn seal(
        &self,
        key: &KeyRecord,
        name: &KeyName,
        ctx: &EncryptionContext,
        plaintext: Zeroizing<Vec<u8>>,
        lease: Option<&LeaseRecord>,
    ) -> Result<Sealed, KeyError> {
        let hsm = self.hsm_for(key)?;
        let version = key
            .primary_version()
            .ok_or_else(|| KeyError::Precondition("key has no enabled version".into()))?;
        let used = key.version(version).map_or(0, |v| v.wrap_count);
        if used >= GCM_RANDOM_IV_LIMIT - 1 {
            return Err(KeyError::Precondition(
                "key version reached its GCM use limit; rotate the key".into(),
            ));
        }
        let iv: [u8; 12] = hsm
            .pool
            .generate_random(12)
            .await?
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Invalid("HSM returned a short IV".into()))?;
        let aad = header_aad(name, version, ctx);
        let sealed = hsm
            .pool
            .encrypt_gcm(&name.hsm_label(version), iv, aad, plaintext)
            .await?;
        let count = self.store.record_use(name.as_str(), version, lease).await?;
        if count >= self.settings.rotate_after_wraps && version == key.latest_version() {
            self.spawn_auto_rotation(name.clone(), version, count);
        }
        let envelope = Envelope {
            key: name.clone(),
            version,
            iv,
            sealed,
        };
        Ok(Sealed {
            ciphertext: envelope.encode(),
            version,
        })
    }

    fn spawn_auto_rotation(&self, name: KeyName, version: u32, count: u64) {
        let this = self.clone();
        tokio::spawn(async move {
            match this.rotate_from(&name, version).await {
                Ok(_) => tracing::info!(
                    key = name.as_str(),
                    from = version,
                    uses = count,
                    "rotated key: version reached rotate_after_wraps"
                ),
                // Another request already rotated it.
                Err(KeyError::Conflict(_)) => {}
                Err(e) => {
                    tracing::warn!(key = name.as_str(), error = %e, "automatic rotation failed")
                }
            }
        });
    }

    /// GenerateDataKey: a fresh data key, its wrapped copy and a lease.
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn generate_data_key(
        &self,
        caller: &Caller,
        name: &KeyName,
        ctx: &EncryptionContext,
        ttl: Option<Duration>,
    ) -> Result<(Released, Sealed), KeyError> {
        let key = self.usable_key(name, Some(Purpose::DataKey)).await?;
        let hsm = self.hsm_for(&key)?;
        let plaintext = hsm.pool.generate_random(DATA_KEY_LEN).await?;
        let (lease, issued) = self.lease(ttl)?;
        let version = key.primary_version().unwrap_or(0);
        let record = Self::lease_record(
            caller,
            &lease,
            issued,
            name.as_str(),
            version,
            "GenerateDataKey",
        );
        let sealed = self
            .seal(&key, name, ctx, plaintext.clone(), Some(&record))
            .await?;
        Ok((
            Released {
                plaintext,
                key: name.as_str().to_owned(),
                version: sealed.version,
                lease,
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
        name: &KeyName,
        ctx: &EncryptionContext,
    ) -> Result<Sealed, KeyError> {
        let key = self.usable_key(name, Some(Purpose::DataKey)).await?;
        let plaintext = self
            .hsm_for(&key)?
            .pool
            .generate_random(DATA_KEY_LEN)
            .await?;
        self.seal(&key, name, ctx, plaintext, None).await
    }

    /// Encrypt (SEAL keys, at most 64 KiB).
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn encrypt(
        &self,
        name: &KeyName,
        ctx: &EncryptionContext,
        plaintext: Zeroizing<Vec<u8>>,
    ) -> Result<Sealed, KeyError> {
        if plaintext.is_empty() || plaintext.len() > MAX_SEAL_PLAINTEXT {
            return Err(KeyError::Invalid(format!(
                "plaintext must be 1 to {MAX_SEAL_PLAINTEXT} bytes, got {}",
                plaintext.len()
            )));
        }
        let key = self.usable_key(name, Some(Purpose::Seal)).await?;
        self.seal(&key, name, ctx, plaintext, None).await
    }

    /// Opens an envelope after checking the key and version states.
    async fn open(
        &self,
        envelope: &Envelope,
        ctx: &EncryptionContext,
    ) -> Result<(KeyRecord, Zeroizing<Vec<u8>>), KeyError> {
        // Either purpose: a SEAL payload and a wrapped data key open the same way.
        let key = self.usable_key(&envelope.key, None).await?;
        let v = key.version(envelope.version).ok_or_else(|| {
            KeyError::Precondition(format!("key version {} does not exist", envelope.version))
        })?;
        if v.state != VersionState::Enabled {
            return Err(KeyError::Precondition(format!(
                "key version {} is {}",
                v.version,
                v.state.as_db().to_ascii_lowercase()
            )));
        }
        if v.version < key.min_decryption_version {
            return Err(KeyError::Precondition(format!(
                "key version {} is below min_decryption_version {}",
                v.version, key.min_decryption_version
            )));
        }
        let hsm = self.hsm_for(&key)?;
        let plaintext = hsm
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
            })?;
        Ok((key, plaintext))
    }

    /// Decrypt: plaintext under a lease.
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn decrypt(
        &self,
        caller: &Caller,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
        ttl: Option<Duration>,
    ) -> Result<Released, KeyError> {
        let envelope = Envelope::parse(ciphertext)?;
        let (lease, issued) = self.lease(ttl)?;
        let (_, plaintext) = self.open(&envelope, ctx).await?;
        let record = Self::lease_record(
            caller,
            &lease,
            issued,
            envelope.key.as_str(),
            envelope.version,
            "Decrypt",
        );
        self.store.insert_lease(&record).await?;
        Ok(Released {
            plaintext,
            key: envelope.key.as_str().to_owned(),
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
        ciphertext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<(String, u32, Sealed), KeyError> {
        let envelope = Envelope::parse(ciphertext)?;
        let (key, plaintext) = self.open(&envelope, ctx).await?;
        let sealed = self.seal(&key, &envelope.key, ctx, plaintext, None).await?;
        Ok((envelope.key.as_str().to_owned(), envelope.version, sealed))
    }

    /// CreateKey: catalog row first (so concurrent creates of one name conflict there), then
    /// the HSM object, then the version is enabled. A failed HSM step frees the name again.
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn create_key(
        &self,
        name: &KeyName,
        purpose: Purpose,
        labels: BTreeMap<String, String>,
        hsm_id: Option<&str>,
        rotation_period: Option<Duration>,
    ) -> Result<KeyRecord, KeyError> {
        let (hsm_id, hsm) = match hsm_id {
            Some(id) => {
                let hsm = self.hsms.get(id).ok_or_else(|| {
                    KeyError::Invalid(format!("no HSM with id {id:?} in the inventory"))
                })?;
                (id.to_owned(), hsm)
            }
            None => self
                .hsms
                .iter()
                .find(|(_, h)| {
                    self.settings
                        .allowed_jurisdictions
                        .contains(&h.jurisdiction)
                })
                .map(|(id, h)| (id.clone(), h))
                .ok_or_else(|| KeyError::Residency("no HSM in an allowed jurisdiction".into()))?,
        };
        self.residency(&hsm_id, hsm)?;
        let rotation_period_secs =
            rotation_period.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let new = NewKey {
            name: name.as_str().to_owned(),
            purpose,
            labels,
            hsm_id,
            created_at: now(),
            rotation_period_secs,
        };
        match self.store.create_key(&new).await {
            Err(StoreError::AlreadyExists(_)) => {
                return Err(KeyError::AlreadyExists(name.as_str().to_owned()));
            }
            other => other?,
        };
        if let Err(e) = hsm.pool.create_aes_key(&name.hsm_label(1)).await {
            if let Err(abort) = self.store.abort_create(name.as_str()).await {
                tracing::error!(key = name.as_str(), error = %abort, "could not free the name after a failed HSM create");
            }
            return Err(e.into());
        }
        self.store
            .set_version_state(name.as_str(), 1, VersionState::Enabled)
            .await?;
        self.get_key(name).await
    }

    /// GetKey.
    ///
    /// # Errors
    /// [`KeyError::NotFound`] for unknown keys.
    pub async fn get_key(&self, name: &KeyName) -> Result<KeyRecord, KeyError> {
        self.store
            .get_key(name.as_str())
            .await?
            .ok_or(KeyError::NotFound)
    }

    /// ListKeys.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, KeyError> {
        Ok(self.store.list_keys(prefix, after, limit).await?)
    }

    /// RotateKey: a new version becomes primary.
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn rotate_key(&self, name: &KeyName) -> Result<KeyRecord, KeyError> {
        let key = self.get_key(name).await?;
        self.rotate_from(name, key.latest_version()).await
    }

    async fn rotate_from(&self, name: &KeyName, current: u32) -> Result<KeyRecord, KeyError> {
        let key = self.get_key(name).await?;
        if key.state != KeyState::Enabled {
            return Err(KeyError::Precondition(format!(
                "key is {}; only enabled keys rotate",
                key.state.as_db().to_ascii_lowercase()
            )));
        }
        let hsm = self.hsm_for(&key)?;
        let next = current + 1;
        match self.store.reserve_version(name.as_str(), next, now()).await {
            Err(StoreError::Conflict(_)) => {
                return Err(KeyError::Conflict(name.as_str().to_owned()));
            }
            other => other?,
        }
        if let Err(e) = hsm.pool.create_aes_key(&name.hsm_label(next)).await {
            if let Err(abort) = self.store.abort_version(name.as_str(), next).await {
                tracing::error!(key = name.as_str(), version = next, error = %abort, "could not drop the version reservation");
            }
            return Err(e.into());
        }
        self.store
            .set_version_state(name.as_str(), next, VersionState::Enabled)
            .await?;
        self.get_key(name).await
    }

    /// Labels of all configured HSMs, for `GetKey` answers.
    pub fn hsm_info(&self, id: &str) -> Option<&HsmHandle> {
        self.hsms.get(id)
    }

    /// Builds an [`EncryptionContext`] from request input.
    ///
    /// # Errors
    /// Limits exceeded.
    pub fn context(map: HashMap<String, String>) -> Result<EncryptionContext, KeyError> {
        Ok(EncryptionContext::from_map(map)?)
    }
}
