//! Catalog operations: CreateKey, GetKey, ListKeys, RotateKey, UpdateKey, and the recovery of
//! versions whose creation a crash interrupted.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::store::{
    KeyRecord, KeyState, NewKey, Purpose, SettingsUpdate, StoreError, VersionState,
};

use super::KeyError;
use super::name::KeyName;
use super::service::KeyService;

/// Shortest automatic rotation period.
pub const MIN_ROTATION_PERIOD: Duration = Duration::from_secs(3600);

/// What UpdateKey changes.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyUpdate {
    /// New `min_decryption_version`.
    pub min_decryption_version: Option<u32>,
    /// New rotation period; `Some(None)` turns rotation off.
    pub rotation_period: Option<Option<Duration>>,
}

fn period_secs(d: Duration) -> Result<i64, KeyError> {
    if d < MIN_ROTATION_PERIOD || d.subsec_nanos() != 0 {
        return Err(KeyError::Invalid(format!(
            "rotation_period must be whole seconds, at least {}",
            MIN_ROTATION_PERIOD.as_secs()
        )));
    }
    i64::try_from(d.as_secs()).map_err(|_| KeyError::Invalid("rotation_period too long".into()))
}

impl KeyService {
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
        if purpose == Purpose::Xks && !super::xks::is_xks_key_id(name.as_str()) {
            return Err(KeyError::Invalid(
                "an XKS key name is its AWS keyId: use [a-z0-9._-] only (no '/')".into(),
            ));
        }
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
        let rotation_period_secs = rotation_period.map(period_secs).transpose()?;
        let now = self.clock.now();
        let new = NewKey {
            name: name.as_str().to_owned(),
            purpose,
            labels,
            hsm_id,
            created_at: now,
            rotation_period_secs,
            next_rotation_at: rotation_period_secs.map(|p| now.saturating_add(p)),
        };
        match self.store.create_key(&new).await {
            Err(StoreError::AlreadyExists(_)) => {
                return Err(KeyError::AlreadyExists(name.as_str().to_owned()));
            }
            other => other?,
        };
        if let Err(e) = super::signing::create_object(&hsm.pool, &name.hsm_label(1), purpose).await
        {
            if let Err(abort) = self.store.abort_create(name.as_str()).await {
                tracing::error!(key = name.as_str(), error = %abort, "could not free the name after a failed HSM create");
            }
            return Err(e.into());
        }
        self.store
            .set_version_state(name.as_str(), 1, VersionState::Enabled)
            .await?;
        self.wake.notify_one();
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

    /// The key as the release path sees it for policy: possibly cached, with use counts that
    /// may lag (see [`crate::store::CachedStore`]); the release gate re-checks the rest.
    ///
    /// # Errors
    /// [`KeyError::NotFound`] for unknown keys.
    pub async fn get_key_for_release(&self, name: &KeyName) -> Result<KeyRecord, KeyError> {
        self.store
            .get_key_for_release(name.as_str())
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

    /// RotateKey: a new version becomes primary (enabled or disabled keys).
    ///
    /// # Errors
    /// See [`KeyError`].
    pub async fn rotate_key(&self, key: &KeyRecord) -> Result<KeyRecord, KeyError> {
        let name = KeyName::parse(&key.name)?;
        // A disabled key may rotate: the compromise drill rotates before re-enabling.
        if !matches!(key.state, KeyState::Enabled | KeyState::Disabled) {
            return Err(KeyError::Precondition(format!(
                "key is {}; only enabled or disabled keys rotate",
                key.state.as_db().to_ascii_lowercase()
            )));
        }
        let next = key.latest_version() + 1;
        match self
            .store
            .reserve_version(name.as_str(), next, self.clock.now())
            .await
        {
            Err(StoreError::Conflict(_)) => {
                return Err(KeyError::Conflict(name.as_str().to_owned()));
            }
            other => other?,
        }
        self.finish_version(key, &name, next, true).await?;
        self.get_key(&name).await
    }

    /// Creates the HSM object of a reserved version and enables it. With `abort`, a failed
    /// HSM step drops the reservation; without (recovery), it is left for the next attempt.
    pub(super) async fn finish_version(
        &self,
        key: &KeyRecord,
        name: &KeyName,
        version: u32,
        abort: bool,
    ) -> Result<(), KeyError> {
        let hsm = self.hsm_for(key)?;
        let label = name.hsm_label(version);
        // After a crash the object may already exist: then it is the version's key.
        let created = match super::signing::object_exists(&hsm.pool, &label, key.purpose).await {
            Ok(true) => Ok(()),
            Ok(false) => super::signing::create_object(&hsm.pool, &label, key.purpose).await,
            Err(e) => Err(e),
        };
        if let Err(e) = created {
            if abort && let Err(a) = self.store.abort_version(name.as_str(), version).await {
                tracing::error!(key = name.as_str(), version, error = %a, "could not drop the version reservation");
            }
            return Err(e.into());
        }
        self.store
            .set_version_state(name.as_str(), version, VersionState::Enabled)
            .await?;
        Ok(())
    }

    /// Completes versions a crash left reserved but unconfirmed. Run once at start, before
    /// serving, so no request can be creating one at the same time.
    ///
    /// # Errors
    /// Catalog or HSM failures.
    pub async fn recover_pending_versions(&self) -> Result<usize, KeyError> {
        let pending = self.store.pending_versions().await?;
        for (name, version) in &pending {
            let name = KeyName::parse(name)?;
            let key = self.get_key(&name).await?;
            self.finish_version(&key, &name, *version, false).await?;
            tracing::warn!(
                key = name.as_str(),
                version,
                "completed a version interrupted by a restart"
            );
        }
        Ok(pending.len())
    }

    /// UpdateKey: `min_decryption_version` (1 ..= primary version) and the rotation period.
    ///
    /// # Errors
    /// `Invalid` for out-of-range values, `Precondition` for destroyed keys.
    pub async fn update_key(
        &self,
        key: &KeyRecord,
        update: KeyUpdate,
    ) -> Result<KeyRecord, KeyError> {
        if matches!(
            key.state,
            KeyState::Destroyed | KeyState::PendingDestruction
        ) {
            return Err(KeyError::Precondition(format!(
                "key is {}",
                key.state.as_db().to_ascii_lowercase()
            )));
        }
        if let Some(min) = update.min_decryption_version {
            let primary = key.primary_version().unwrap_or(0);
            if min == 0 || min > primary {
                return Err(KeyError::Invalid(format!(
                    "min_decryption_version must be in 1..={primary} (the primary version)"
                )));
            }
        }
        let now = self.clock.now();
        let rotation = match update.rotation_period {
            None => None,
            Some(None) => Some(None),
            Some(Some(d)) => {
                let p = period_secs(d)?;
                Some(Some((p, now.saturating_add(p))))
            }
        };
        let settings = SettingsUpdate {
            min_decryption_version: update.min_decryption_version,
            rotation,
        };
        self.store.update_settings(&key.name, &settings).await?;
        self.wake.notify_one();
        self.get_key(&KeyName::parse(&key.name)?).await
    }
}
