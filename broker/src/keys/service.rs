//! The key service: the one place that turns a request into HSM calls and catalog changes.
//! This file holds the shared state and the checks every operation runs; the operations live
//! in `datakeys.rs` (envelope encryption), `catalog.rs` (create/get/list/rotate/update) and
//! `lifecycle.rs` (disable/enable/destruction/lease revocation).
//!
//! Every use of a key is checked twice: against the record the API layer loaded for policy
//! (before any HSM work), and again in the catalog's release gate right before anything leaves
//! the broker — so a key disabled while a request waited for an HSM session is refused too.
//! The residency guard is not here: it runs once, in `api/authz.rs`, before the service.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use zeroize::Zeroizing;

use crate::hsm::HsmPool;
use crate::store::{
    GateOutcome, KeyRecord, KeyState, LeaseRecord, Purpose, ReleaseGate, Store, VersionState, Who,
};

use super::KeyError;
use super::clock::Clock;
use super::context::EncryptionContext;

/// Length of a data key.
pub const DATA_KEY_LEN: usize = 32;
/// Largest payload `Encrypt` accepts.
pub const MAX_SEAL_PLAINTEXT: usize = 64 * 1024;
/// NIST SP 800-38D: at most 2^32 random-IV GCM encryptions per key.
pub const GCM_RANDOM_IV_LIMIT: u64 = 1 << 32;

/// Why a version at [`GCM_RANDOM_IV_LIMIT`] seals nothing more.
pub(super) const GCM_LIMIT_REACHED: &str = "key version reached its GCM use limit; rotate the key";

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
    /// HSM jurisdictions new keys may be placed in (HSM selection only; the residency guard
    /// itself runs in the API layer).
    pub allowed_jurisdictions: Vec<String>,
    /// Lease when the caller asks for none.
    pub default_lease_ttl: Duration,
    /// Longest lease.
    pub max_lease_ttl: Duration,
    /// Rotate a version after this many encryptions.
    pub rotate_after_wraps: u64,
    /// Waiting period of `ScheduleKeyDestruction` when the caller gives none.
    pub default_destruction_wait: Duration,
    /// Shortest waiting period accepted.
    pub min_destruction_wait: Duration,
}

/// Longest destruction waiting period accepted.
pub const MAX_DESTRUCTION_WAIT: Duration = Duration::from_secs(365 * 86_400);

/// Who asked, for leases and revocations.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token issuer.
    pub issuer: String,
    /// Subject.
    pub subject: String,
    /// Job id from verified identity.
    pub job_id: Option<String>,
    /// Where a release whose gate opened leaves its ticket for the audit record.
    pub ticket: super::leases::TicketSlot,
}

impl Caller {
    pub(super) fn who(&self) -> Who<'_> {
        Who {
            issuer: &self.issuer,
            subject: &self.subject,
            job_id: self.job_id.as_deref(),
        }
    }
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
    pub(super) store: Arc<dyn Store>,
    pub(super) hsms: Arc<BTreeMap<String, HsmHandle>>,
    pub(super) settings: Arc<KeySettings>,
    pub(super) clock: Arc<dyn Clock>,
    /// Wakes the lifecycle scheduler: a deadline was set or moved, or a version reached
    /// `rotate_after_wraps` (then it is in `wrap_due`).
    pub(super) wake: Arc<Notify>,
    /// Keys whose primary version reached `rotate_after_wraps`: name → that version.
    pub(super) wrap_due: Arc<Mutex<BTreeMap<String, u32>>>,
    /// Lease rows written after their audit record.
    pub(super) leases: super::leases::LeaseWriter,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService")
            .field("hsms", &self.hsms.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl KeyService {
    /// Builds the service over a catalog, the opened HSMs and a clock.
    pub fn new(
        store: Arc<dyn Store>,
        hsms: BTreeMap<String, HsmHandle>,
        settings: KeySettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            leases: super::leases::LeaseWriter::start(store.clone()),
            store,
            hsms: Arc::new(hsms),
            settings: Arc::new(settings),
            clock,
            wake: Arc::new(Notify::new()),
            wrap_due: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// The background writer of lease rows (leases whose audit record is durable).
    pub fn leases(&self) -> &super::leases::LeaseWriter {
        &self.leases
    }

    /// The HSMs, for health probes.
    pub fn hsms(&self) -> impl Iterator<Item = &HsmHandle> {
        self.hsms.values()
    }

    /// The catalog, for health probes.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The service's clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The settings.
    pub fn settings(&self) -> &KeySettings {
        &self.settings
    }

    /// The HSM of `id`, if configured.
    pub fn hsm_info(&self, id: &str) -> Option<&HsmHandle> {
        self.hsms.get(id)
    }

    /// The HSM holding `key`.
    pub(super) fn hsm_for(&self, key: &KeyRecord) -> Result<&HsmHandle, KeyError> {
        self.hsms
            .get(&key.hsm_id)
            .ok_or_else(|| KeyError::Precondition(format!("HSM {} is not configured", key.hsm_id)))
    }

    /// Fails unless `caller` may still use keys (no revocation in force).
    pub(super) async fn not_revoked(&self, caller: &Caller) -> Result<(), KeyError> {
        if self
            .store
            .is_revoked(&caller.who(), self.clock.now())
            .await?
        {
            return Err(KeyError::Revoked);
        }
        Ok(())
    }

    /// Runs the release gate; when it is closed, says why (re-reading the catalog).
    pub(super) async fn release(
        &self,
        caller: &Caller,
        gate: ReleaseGate<'_>,
    ) -> Result<u64, KeyError> {
        match self.store.release(&gate).await? {
            GateOutcome::Open(count) => {
                let ticket = super::leases::ReleaseTicket {
                    check: super::leases::GateCheck {
                        key: gate.key.to_owned(),
                        wrap_version: gate.wrap_version,
                        open_version: gate.open_version,
                        issuer: caller.issuer.clone(),
                        subject: caller.subject.clone(),
                        job_id: caller.job_id.clone(),
                        now: gate.now,
                    },
                    lease: gate.lease.cloned(),
                };
                *caller
                    .ticket
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ticket);
                Ok(count)
            }
            GateOutcome::Closed => {
                self.not_revoked(caller).await?;
                let key = self
                    .store
                    .get_key(gate.key)
                    .await?
                    .ok_or(KeyError::NotFound)?;
                check_usable(&key, None)?;
                for v in [gate.wrap_version, gate.open_version].into_iter().flatten() {
                    check_version(&key, v, gate.open_version == Some(v))?;
                }
                if let Some(v) = gate.wrap_version.and_then(|v| key.version(v))
                    && v.wrap_count >= GCM_RANDOM_IV_LIMIT - 1
                {
                    return Err(KeyError::Precondition(GCM_LIMIT_REACHED.into()));
                }
                Err(KeyError::Precondition(
                    "key state changed during the request".into(),
                ))
            }
        }
    }

    /// A lease for a release now, `ttl` capped at `max_lease_ttl`.
    pub(super) fn lease(&self, ttl: Option<Duration>) -> Result<(Lease, i64), KeyError> {
        let ttl = ttl.unwrap_or(self.settings.default_lease_ttl);
        if ttl.is_zero() {
            return Err(KeyError::Invalid("ttl must be positive".into()));
        }
        let ttl = ttl.min(self.settings.max_lease_ttl);
        let ttl_secs = u32::try_from(ttl.as_secs().max(1)).unwrap_or(u32::MAX);
        let issued = self.clock.now();
        Ok((
            Lease {
                id: uuid::Uuid::new_v4().to_string(),
                expires_at: issued + i64::from(ttl_secs),
                ttl_secs,
            },
            issued,
        ))
    }

    pub(super) fn lease_record(
        caller: &Caller,
        (lease, issued_at): (&Lease, i64),
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

    /// Asks the scheduler to rotate `name` away from `version` (its use count reached
    /// `rotate_after_wraps`); the scheduler audits the rotation.
    pub(super) fn spawn_wrap_rotation(&self, name: super::name::KeyName, version: u32, count: u64) {
        tracing::info!(
            key = name.as_str(),
            version,
            uses = count,
            "version reached rotate_after_wraps"
        );
        if let Ok(mut due) = self.wrap_due.lock() {
            due.insert(name.as_str().to_owned(), version);
        }
        self.wake.notify_one();
    }

    /// Builds an [`EncryptionContext`] from request input.
    ///
    /// # Errors
    /// Limits exceeded.
    pub fn context(map: HashMap<String, String>) -> Result<EncryptionContext, KeyError> {
        Ok(EncryptionContext::from_map(map)?)
    }
}

/// The key is enabled and (when `purpose` is given) has that purpose.
pub(super) fn check_usable(key: &KeyRecord, purpose: Option<Purpose>) -> Result<(), KeyError> {
    match key.state {
        KeyState::Enabled => {}
        KeyState::Disabled => return Err(KeyError::Precondition("key is disabled".into())),
        KeyState::PendingDestruction => {
            return Err(KeyError::Precondition("key is pending destruction".into()));
        }
        KeyState::Destroyed => return Err(KeyError::Precondition("key is destroyed".into())),
    }
    if let Some(purpose) = purpose.filter(|p| *p != key.purpose) {
        return Err(KeyError::Precondition(format!(
            "key purpose is {}, this operation needs {}",
            key.purpose.as_db(),
            purpose.as_db()
        )));
    }
    Ok(())
}

/// Version `v` exists and is enabled; for opening (`open`), also not below
/// `min_decryption_version`.
pub(super) fn check_version(key: &KeyRecord, v: u32, open: bool) -> Result<(), KeyError> {
    let rec = key
        .version(v)
        .ok_or_else(|| KeyError::Precondition(format!("key version {v} does not exist")))?;
    if rec.state != VersionState::Enabled {
        return Err(KeyError::Precondition(format!(
            "key version {v} is {}",
            rec.state.as_db().to_ascii_lowercase()
        )));
    }
    if open && v < key.min_decryption_version {
        return Err(KeyError::Precondition(format!(
            "key version {v} is below min_decryption_version {}",
            key.min_decryption_version
        )));
    }
    Ok(())
}
