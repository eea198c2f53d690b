//! Lifecycle transitions (DESIGN §3): `ENABLED ⇄ DISABLED → PENDING_DESTRUCTION → DESTROYED`,
//! per-version disable/enable, and lease revocation.
//!
//! The rules are the pure function [`transition`]; the catalog applies each as a
//! compare-and-set on the state the rule was checked against, so a racing change makes the
//! call fail with a retryable conflict instead of skipping a rule. A destroyed key stays
//! destroyed and its name is never reused (the catalog row stays).

use std::time::Duration;

use crate::store::{KeyRecord, KeyState, RevocationTarget, StoreError, VersionState};

use super::KeyError;
use super::name::KeyName;
use super::service::{KeyService, MAX_DESTRUCTION_WAIT};

/// A whole-key lifecycle request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    /// DisableKey.
    Disable,
    /// EnableKey.
    Enable,
    /// ScheduleKeyDestruction.
    ScheduleDestruction,
}

/// The state `change` moves a key in `from` to; `Ok(None)` when it is already there (the call
/// succeeds without a change).
///
/// # Errors
/// `Precondition` naming the current state when the change is not allowed from it.
pub fn transition(from: KeyState, change: KeyChange) -> Result<Option<KeyState>, KeyError> {
    use KeyChange as C;
    use KeyState as S;
    let refuse = |why: &str| {
        Err(KeyError::Precondition(format!(
            "key is {}: {why}",
            from.as_db().to_ascii_lowercase()
        )))
    };
    match (from, change) {
        (S::Destroyed, _) => refuse("a destroyed key never changes state again"),
        (S::Enabled, C::Disable) => Ok(Some(S::Disabled)),
        (S::Disabled, C::Disable) | (S::Enabled, C::Enable) => Ok(None),
        (S::Disabled, C::Enable) => Ok(Some(S::Enabled)),
        (S::PendingDestruction, C::Disable | C::Enable) => {
            refuse("cancel the destruction first (CancelKeyDestruction)")
        }
        (S::Enabled | S::Disabled, C::ScheduleDestruction) => Ok(Some(S::PendingDestruction)),
        (S::PendingDestruction, C::ScheduleDestruction) => {
            refuse("destruction is already scheduled")
        }
    }
}

/// The version state `enable`/disable moves a version in `from` to (`Ok(None)`: no change).
///
/// # Errors
/// `Precondition` for a destroyed or not yet created version.
pub fn version_transition(
    from: VersionState,
    enable: bool,
) -> Result<Option<VersionState>, KeyError> {
    match (from, enable) {
        (VersionState::Enabled, true) | (VersionState::Disabled, false) => Ok(None),
        (VersionState::Enabled, false) => Ok(Some(VersionState::Disabled)),
        (VersionState::Disabled, true) => Ok(Some(VersionState::Enabled)),
        (VersionState::Destroyed | VersionState::PendingCreate, _) => Err(KeyError::Precondition(
            format!("key version is {}", from.as_db().to_ascii_lowercase()),
        )),
    }
}

fn conflict(name: &str) -> impl FnOnce(StoreError) -> KeyError + '_ {
    move |e| match e {
        StoreError::Conflict(_) => KeyError::Conflict(name.to_owned()),
        other => KeyError::Store(other),
    }
}

impl KeyService {
    /// DisableKey / EnableKey of the whole key (`version` 0) or of one version.
    ///
    /// # Errors
    /// `Precondition` when the state does not allow it, `Conflict` on a racing change.
    pub async fn set_enabled(
        &self,
        key: &KeyRecord,
        version: u32,
        enable: bool,
    ) -> Result<KeyRecord, KeyError> {
        let name = KeyName::parse(&key.name)?;
        if version == 0 {
            let change = if enable {
                KeyChange::Enable
            } else {
                KeyChange::Disable
            };
            if let Some(to) = transition(key.state, change)? {
                self.store
                    .set_key_state(&key.name, key.state, to, None)
                    .await
                    .map_err(conflict(&key.name))?;
            }
        } else {
            if matches!(
                key.state,
                KeyState::Destroyed | KeyState::PendingDestruction
            ) {
                transition(key.state, KeyChange::Disable)?;
            }
            let current = key
                .version(version)
                .ok_or_else(|| {
                    KeyError::Precondition(format!("key version {version} does not exist"))
                })?
                .state;
            if let Some(to) = version_transition(current, enable)? {
                if !enable
                    && key.primary_version() == Some(version)
                    && key.state == KeyState::Enabled
                {
                    tracing::warn!(key = %key.name, version, "disabling the primary version: encryptions move to the newest enabled older version");
                }
                self.store
                    .swap_version_state(&key.name, version, current, to)
                    .await
                    .map_err(conflict(&key.name))?;
            }
        }
        self.get_key(&name).await
    }

    /// ScheduleKeyDestruction: `wait` (default from config) must lie in
    /// `min_destruction_wait ..= 365 days`.
    ///
    /// # Errors
    /// `Invalid` for a wait out of range, `Precondition` when the state does not allow it.
    pub async fn schedule_destruction(
        &self,
        key: &KeyRecord,
        wait: Option<Duration>,
    ) -> Result<KeyRecord, KeyError> {
        let wait = wait.unwrap_or(self.settings.default_destruction_wait);
        let floor = self.settings.min_destruction_wait;
        if wait < floor || wait > MAX_DESTRUCTION_WAIT {
            return Err(KeyError::Invalid(format!(
                "waiting_period must be between {} and 365 days (keys.min_destruction_wait is \
                 the floor), got {}",
                humantime::format_duration(floor),
                humantime::format_duration(wait)
            )));
        }
        let to = transition(key.state, KeyChange::ScheduleDestruction)?
            .unwrap_or(KeyState::PendingDestruction);
        let secs = i64::try_from(wait.as_secs()).unwrap_or(i64::MAX);
        let deadline = self.clock.now().saturating_add(secs);
        self.store
            .set_key_state(&key.name, key.state, to, Some(deadline))
            .await
            .map_err(conflict(&key.name))?;
        self.wake.notify_one();
        self.get_key(&KeyName::parse(&key.name)?).await
    }

    /// CancelKeyDestruction: before the deadline only; the key becomes `DISABLED`.
    ///
    /// # Errors
    /// `Precondition` when the key is not pending destruction or the deadline has passed.
    pub async fn cancel_destruction(&self, key: &KeyRecord) -> Result<KeyRecord, KeyError> {
        if key.state != KeyState::PendingDestruction {
            return Err(KeyError::Precondition(format!(
                "key is {}: no destruction to cancel",
                key.state.as_db().to_ascii_lowercase()
            )));
        }
        match self
            .store
            .cancel_destruction(&key.name, self.clock.now())
            .await
        {
            Err(StoreError::Conflict(_)) => {
                return Err(KeyError::Precondition(
                    "the destruction deadline has passed; the key is being destroyed".into(),
                ));
            }
            other => other?,
        }
        self.get_key(&KeyName::parse(&key.name)?).await
    }

    /// RevokeLeases: denies every further DataKeys operation to `target` until the longest
    /// lease that could have been issued before now has expired. Returns the leases marked and
    /// the end of the revocation.
    ///
    /// # Errors
    /// `Invalid` for an empty target; catalog failures.
    pub async fn revoke_leases(&self, target: &RevocationTarget) -> Result<(u32, i64), KeyError> {
        let empty = match target {
            RevocationTarget::Job(j) => j.is_empty(),
            RevocationTarget::Principal { subject, .. } => subject.is_empty(),
        };
        if empty {
            return Err(KeyError::Invalid("give a job id or a subject".into()));
        }
        let now = self.clock.now();
        let longest = i64::try_from(self.settings.max_lease_ttl.as_secs()).unwrap_or(i64::MAX);
        let until = now.saturating_add(longest);
        // Leases acknowledged before this call may still be on their way to the catalog
        // (they are written after their audit record): land them first, so they are marked.
        self.leases.flush().await;
        let marked = self.store.revoke(target, now, until).await?;
        Ok((marked, until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyChange as C;
    use KeyState as S;

    #[test]
    fn destroyed_is_final_and_pending_needs_cancel() {
        for c in [C::Disable, C::Enable, C::ScheduleDestruction] {
            assert!(transition(S::Destroyed, c).is_err(), "{c:?}");
        }
        assert!(transition(S::PendingDestruction, C::Enable).is_err());
        assert!(transition(S::PendingDestruction, C::Disable).is_err());
        assert!(transition(S::PendingDestruction, C::ScheduleDestruction).is_err());
    }

    #[test]
    fn enable_disable_are_idempotent_and_schedule_from_either() {
        assert_eq!(
            transition(S::Enabled, C::Disable).ok(),
            Some(Some(S::Disabled))
        );
        assert_eq!(transition(S::Disabled, C::Disable).ok(), Some(None));
        assert_eq!(
            transition(S::Disabled, C::Enable).ok(),
            Some(Some(S::Enabled))
        );
        assert_eq!(transition(S::Enabled, C::Enable).ok(), Some(None));
        for from in [S::Enabled, S::Disabled] {
            assert_eq!(
                transition(from, C::ScheduleDestruction).ok(),
                Some(Some(S::PendingDestruction))
            );
        }
    }

    #[test]
    fn versions_toggle_but_destroyed_and_pending_do_not() {
        use VersionState as V;
        assert_eq!(
            version_transition(V::Enabled, false).ok(),
            Some(Some(V::Disabled))
        );
        assert_eq!(
            version_transition(V::Disabled, true).ok(),
            Some(Some(V::Enabled))
        );
        assert_eq!(version_transition(V::Disabled, false).ok(), Some(None));
        assert!(version_transition(V::Destroyed, true).is_err());
        assert!(version_transition(V::PendingCreate, true).is_err());
    }
}
