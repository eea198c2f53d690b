//! Catalog store: keys, versions, use counters and leases, behind one backend-neutral trait.
//!
//! SQLite is the embedded default; PostgreSQL (several replicas) implements the same trait.
//! Nothing outside this room knows which backend is in use: records are plain Rust types and
//! states travel as [`KeyState`] / [`VersionState`], never as SQL text.

mod cached;
mod catalog;
mod gate;
mod group;
mod open;
pub(crate) mod postgres;
mod rows;
mod sqlite;
mod wraps;

#[cfg(test)]
mod bench;

use std::collections::BTreeMap;

use async_trait::async_trait;

pub use cached::CachedStore;
pub use gate::{GateOutcome, ReleaseGate, RevocationTarget, SettingsUpdate, Who};
pub use open::{Opened, open};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use wraps::{BLOCK as WRAP_BLOCK, WrapCounters};

/// Errors of the catalog store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key or version with that identity already exists (names are never reused).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The row to change was changed concurrently by someone else.
    #[error("concurrent change of {0}; retry")]
    Conflict(String),
    /// The row to change does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A stored value could not be read back (corruption or a newer schema).
    #[error("catalog holds an invalid value in {field}: {problem}")]
    Corrupt {
        /// Table and column.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The database failed or could not be reached.
    #[error("catalog database error")]
    Database(#[from] sqlx::Error),
    /// Schema migration failed at start.
    #[error("catalog migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The file holding the PostgreSQL URL cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    UrlFile {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The PostgreSQL URL does not parse (the URL itself is never repeated: it may hold a
    /// password).
    #[error("not a valid postgres:// URL")]
    BadUrl,
}

/// Purpose of a key (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Envelope encryption of data keys.
    DataKey,
    /// Encrypt/decrypt of small secrets.
    Seal,
    /// An AWS KMS external key: AES-256-GCM on the XKS proxy API only.
    Xks,
    /// Signatures (Signing service). The algorithm is fixed for the key's life, so it is part
    /// of the purpose (stored as `SIGN_ECDSA_P256` / `SIGN_ED25519`: no column of its own).
    Sign(crate::hsm::SignAlgorithm),
}

/// State of a whole key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Usable.
    Enabled,
    /// Revoked; reversible.
    Disabled,
    /// Waiting for destruction; cancellable.
    PendingDestruction,
    /// HSM objects destroyed; final.
    Destroyed,
}

/// State of one key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Catalog row reserved, HSM object not yet confirmed.
    PendingCreate,
    /// Usable.
    Enabled,
    /// Revoked; reversible.
    Disabled,
    /// HSM object destroyed.
    Destroyed,
}

/// One version of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// 1..n.
    pub version: u32,
    /// Lifecycle state.
    pub state: VersionState,
    /// Unix seconds.
    pub created_at: i64,
    /// GCM encryptions made under this version so far.
    pub wrap_count: u64,
}

/// A key of the catalog with its versions (ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Validated key name.
    pub name: String,
    /// What the key is for.
    pub purpose: Purpose,
    /// Whole-key state.
    pub state: KeyState,
    /// Labels that feed policy.
    pub labels: BTreeMap<String, String>,
    /// HSM inventory id.
    pub hsm_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Ciphertexts of older versions are refused.
    pub min_decryption_version: u32,
    /// Automatic rotation period in seconds, if any.
    pub rotation_period_secs: Option<i64>,
    /// When the next automatic rotation is due (unix seconds), while rotation is on.
    pub next_rotation_at: Option<i64>,
    /// When the HSM objects get destroyed (unix seconds), while `PendingDestruction`.
    pub destroy_after: Option<i64>,
    /// Versions, ascending.
    pub versions: Vec<VersionRecord>,
}

impl KeyRecord {
    /// The newest enabled version: the one new encryptions use.
    pub fn primary_version(&self) -> Option<u32> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == VersionState::Enabled)
            .map(|v| v.version)
    }

    /// The record of `version`, if it exists.
    pub fn version(&self, version: u32) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The highest version number ever reserved (0 when none).
    pub fn latest_version(&self) -> u32 {
        self.versions.last().map_or(0, |v| v.version)
    }
}

/// What `create_key` inserts: the key plus version 1 in `PendingCreate`.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Validated key name.
    pub name: String,
    /// What the key is for.
    pub purpose: Purpose,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// HSM inventory id.
    pub hsm_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Automatic rotation period in seconds.
    pub rotation_period_secs: Option<i64>,
    /// First automatic rotation (unix seconds), when the period is set.
    pub next_rotation_at: Option<i64>,
}

/// A revocation in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// What it covers.
    pub target: RevocationTarget,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Revocation {
    /// Whether it covers `who` at `now` (the rule of the gate statements).
    #[must_use]
    pub fn covers(&self, who: &Who<'_>, now: i64) -> bool {
        if self.expires_at <= now {
            return false;
        }
        match &self.target {
            RevocationTarget::Job(job) => who.job_id == Some(job.as_str()),
            RevocationTarget::Principal { issuer, subject } => {
                who.subject == subject && (issuer.is_empty() || who.issuer == issuer)
            }
        }
    }
}

/// A lease on released plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// Opaque id given to the client.
    pub lease_id: String,
    /// Key name.
    pub key_name: String,
    /// Key version used.
    pub version: u32,
    /// Operation that released plaintext.
    pub op: &'static str,
    /// Token issuer of the principal.
    pub issuer: String,
    /// Subject of the principal.
    pub subject: String,
    /// Job id from verified identity, if any.
    pub job_id: Option<String>,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The catalog, whatever the backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a key and its version 1 (`PendingCreate`) atomically.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] when the name was ever used.
    async fn create_key(&self, key: &NewKey) -> Result<KeyRecord, StoreError>;

    /// Removes a key whose version 1 never left `PendingCreate` (its HSM object could not be
    /// made), so a failed creation does not burn the name.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the key has any other version state.
    async fn abort_create(&self, name: &str) -> Result<(), StoreError>;

    /// The key and its versions.
    ///
    /// # Errors
    /// Database failures.
    async fn get_key(&self, name: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// The key and its versions, for policy on the release path: may come from a cache whose
    /// use counts lag (never its states, labels or versions; see [`CachedStore`]). The release
    /// gate re-checks everything that decides a release.
    ///
    /// # Errors
    /// Database failures.
    async fn get_key_for_release(&self, name: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.get_key(name).await
    }

    /// Keys whose name starts with `prefix`, after `after` (exclusive), at most `limit`, by name.
    ///
    /// # Errors
    /// Database failures.
    async fn list_keys(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<KeyRecord>, StoreError>;

    /// Reserves version `version` (`PendingCreate`).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when that version already exists (a concurrent rotation).
    async fn reserve_version(&self, name: &str, version: u32, now: i64) -> Result<(), StoreError>;

    /// Sets the state of one version.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the version does not exist.
    async fn set_version_state(
        &self,
        name: &str,
        version: u32,
        state: VersionState,
    ) -> Result<(), StoreError>;

    /// Drops a version reservation that never left `PendingCreate`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the version is in another state.
    async fn abort_version(&self, name: &str, version: u32) -> Result<(), StoreError>;

    /// The release gate, run after the HSM did its work and before the audit append: it checks
    /// that the key is enabled, that the versions used are enabled (and, for `open_version`,
    /// not below `min_decryption_version`), and that the caller is not revoked; only then it
    /// counts the wrap. A closed gate changes nothing. Where the lease goes depends on the
    /// backend (DESIGN §6): the single node ([`CachedStore`]) checks in memory and records no
    /// lease here — the audit record is the durable record of the release, and the lease row
    /// follows in the background ([`Store::insert_leases`]); PostgreSQL checks again and records
    /// the lease in the audit log's own transaction; a bare [`SqliteStore`] (tests, tools)
    /// records it durably here.
    ///
    /// # Errors
    /// Database failures; the caller must not release anything then.
    async fn release(&self, gate: &ReleaseGate<'_>) -> Result<GateOutcome, StoreError>;

    /// Durably raises the use count of an enabled version by up to `block` (never past the GCM
    /// limit) and returns `(before, after)`: the wraps numbered `before + 1 ..= after` are the
    /// caller's. `None` when the version is not enabled or at the limit.
    ///
    /// # Errors
    /// Database failures.
    async fn reserve_wraps(
        &self,
        name: &str,
        version: u32,
        block: u64,
    ) -> Result<Option<(u64, u64)>, StoreError>;

    /// Records leases whose releases are in the audit log (each with its record's index); a
    /// lease already recorded is left as it is.
    ///
    /// # Errors
    /// Database failures.
    async fn insert_leases(&self, leases: &[(LeaseRecord, u64)]) -> Result<(), StoreError>;

    /// Revocations in force at `now` (for the in-memory gate).
    ///
    /// # Errors
    /// Database failures.
    async fn active_revocations(&self, now: i64) -> Result<Vec<Revocation>, StoreError>;

    /// Whether a revocation in force at `now` covers the caller.
    ///
    /// # Errors
    /// Database failures.
    async fn is_revoked(&self, who: &Who<'_>, now: i64) -> Result<bool, StoreError>;

    /// Records a revocation of `target` until `until` and marks the unexpired leases it covers
    /// as revoked; returns how many.
    ///
    /// # Errors
    /// Database failures.
    async fn revoke(
        &self,
        target: &RevocationTarget,
        now: i64,
        until: i64,
    ) -> Result<u32, StoreError>;

    /// Moves the key from state `from` to `to`, setting `destroy_after` (compare-and-set).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the key is no longer in `from`.
    async fn set_key_state(
        &self,
        name: &str,
        from: KeyState,
        to: KeyState,
        destroy_after: Option<i64>,
    ) -> Result<(), StoreError>;

    /// Moves one version from `from` to `to` (compare-and-set; the key must not be destroyed
    /// or pending destruction).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the version is no longer in `from`.
    async fn swap_version_state(
        &self,
        name: &str,
        version: u32,
        from: VersionState,
        to: VersionState,
    ) -> Result<(), StoreError>;

    /// Sets `min_decryption_version` and/or the rotation schedule (`Some(None)` turns rotation
    /// off).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown key.
    async fn update_settings(&self, name: &str, update: &SettingsUpdate) -> Result<(), StoreError>;

    /// Cancels a destruction whose deadline is still after `now`: the key becomes `Disabled`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the key is not pending destruction or the deadline passed.
    async fn cancel_destruction(&self, name: &str, now: i64) -> Result<(), StoreError>;

    /// Keys pending destruction whose deadline is at or before `now`.
    ///
    /// # Errors
    /// Database failures.
    async fn due_destructions(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError>;

    /// Marks a pending-destruction key and all its versions `Destroyed`, for good.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the key is not pending destruction.
    async fn mark_destroyed(&self, name: &str) -> Result<(), StoreError>;

    /// Enabled keys whose next automatic rotation is due at or before `now`.
    ///
    /// # Errors
    /// Database failures.
    async fn due_rotations(&self, now: i64) -> Result<Vec<KeyRecord>, StoreError>;

    /// Claims one automatic rotation: reserves `version` (`PendingCreate`) and moves
    /// `next_rotation_at` from `due` to `next`, in one transaction, so a rotation is claimed
    /// exactly once whatever restarts in between.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the schedule moved or the version exists.
    async fn claim_rotation(
        &self,
        name: &str,
        version: u32,
        due: i64,
        next: i64,
        now: i64,
    ) -> Result<(), StoreError>;

    /// Versions reserved but never confirmed (a crash between catalog and HSM), for recovery.
    ///
    /// # Errors
    /// Database failures.
    async fn pending_versions(&self) -> Result<Vec<(String, u32)>, StoreError>;

    /// The earliest destruction or rotation deadline, for the scheduler's sleep.
    ///
    /// # Errors
    /// Database failures.
    async fn next_deadline(&self) -> Result<Option<i64>, StoreError>;

    /// Cheap liveness probe.
    ///
    /// # Errors
    /// The database cannot be reached.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Keys by state and unexpired leases at unix time `now`, for `/metrics`. The default
    /// reports nothing (a backend that does not count yet).
    ///
    /// # Errors
    /// Database failures.
    async fn gauges(&self, now: i64) -> Result<CatalogGauges, StoreError> {
        let _ = now;
        Ok(CatalogGauges::default())
    }
}

/// Catalog counts for the metrics sampler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatalogGauges {
    /// Number of keys per state (`ENABLED`, `DISABLED`, …; states with no key are absent).
    pub keys_by_state: Vec<(String, i64)>,
    /// Leases whose expiry is still ahead, when the backend counts them.
    pub active_leases: Option<i64>,
}

impl Purpose {
    pub(crate) fn as_db(self) -> &'static str {
        match self {
            Purpose::DataKey => "DATA_KEY",
            Purpose::Seal => "SEAL",
            Purpose::Xks => "XKS",
            Purpose::Sign(crate::hsm::SignAlgorithm::EcdsaP256) => "SIGN_ECDSA_P256",
            Purpose::Sign(crate::hsm::SignAlgorithm::Ed25519) => "SIGN_ED25519",
        }
    }

    pub(crate) fn from_db(s: &str) -> Result<Self, StoreError> {
        match s {
            "DATA_KEY" => Ok(Purpose::DataKey),
            "SEAL" => Ok(Purpose::Seal),
            "XKS" => Ok(Purpose::Xks),
            "SIGN_ECDSA_P256" => Ok(Purpose::Sign(crate::hsm::SignAlgorithm::EcdsaP256)),
            "SIGN_ED25519" => Ok(Purpose::Sign(crate::hsm::SignAlgorithm::Ed25519)),
            other => Err(corrupt("keys.purpose", other)),
        }
    }
}

impl KeyState {
    pub(crate) fn as_db(self) -> &'static str {
        match self {
            KeyState::Enabled => "ENABLED",
            KeyState::Disabled => "DISABLED",
            KeyState::PendingDestruction => "PENDING_DESTRUCTION",
            KeyState::Destroyed => "DESTROYED",
        }
    }

    pub(crate) fn from_db(s: &str) -> Result<Self, StoreError> {
        match s {
            "ENABLED" => Ok(KeyState::Enabled),
            "DISABLED" => Ok(KeyState::Disabled),
            "PENDING_DESTRUCTION" => Ok(KeyState::PendingDestruction),
            "DESTROYED" => Ok(KeyState::Destroyed),
            other => Err(corrupt("keys.state", other)),
        }
    }
}

impl VersionState {
    pub(crate) fn as_db(self) -> &'static str {
        match self {
            VersionState::PendingCreate => "PENDING_CREATE",
            VersionState::Enabled => "ENABLED",
            VersionState::Disabled => "DISABLED",
            VersionState::Destroyed => "DESTROYED",
        }
    }

    pub(crate) fn from_db(s: &str) -> Result<Self, StoreError> {
        match s {
            "PENDING_CREATE" => Ok(VersionState::PendingCreate),
            "ENABLED" => Ok(VersionState::Enabled),
            "DISABLED" => Ok(VersionState::Disabled),
            "DESTROYED" => Ok(VersionState::Destroyed),
            other => Err(corrupt("key_versions.state", other)),
        }
    }
}

fn corrupt(field: &'static str, value: &str) -> StoreError {
    StoreError::Corrupt {
        field,
        problem: format!("unknown value {value:?}"),
    }
}
