//! Key lifecycle calls on [`Client`]: update settings, disable/enable (whole key or one
//! version), schedule and cancel destruction, revoke leases.

use std::time::Duration;

use keybroker_proto::v1 as pb;

use crate::types::{KeyInfo, Revocation, timestamp};
use crate::{Client, ClientError};

/// Whose leases [`Client::revoke_leases`] revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// Every principal carrying this job id.
    Job(String),
    /// A subject, of one issuer (`None`: of every issuer).
    Principal {
        /// Subject claim.
        subject: String,
        /// Token issuer.
        issuer: Option<String>,
    },
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// Runs one KeyAdmin call that answers a `Key`.
macro_rules! key_call {
    ($self:ident, $method:ident, $msg:expr) => {{
        let (req, rid) = $self.request($msg).await?;
        let key = $self
            .key_admin()
            .$method(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(KeyInfo::from(key))
    }};
}

impl Client {
    /// Sets `min_decryption_version` and/or the automatic rotation period (`Some(None)` turns
    /// rotation off).
    ///
    /// # Errors
    /// `Status` (`INVALID_ARGUMENT` for out-of-range values, `FAILED_PRECONDITION` for a
    /// destroyed key, `PERMISSION_DENIED`), token-file errors.
    pub async fn update_key(
        &self,
        name: &str,
        min_decryption_version: Option<u32>,
        rotation_period: Option<Option<Duration>>,
    ) -> Result<KeyInfo, ClientError> {
        let rotation_period = rotation_period.map(|p| duration(p.unwrap_or_default()));
        key_call!(
            self,
            update_key,
            pb::UpdateKeyRequest {
                name: name.to_owned(),
                min_decryption_version,
                rotation_period,
            }
        )
    }

    /// Disables key `name` (`version` 0) or one version: every use is refused from the next
    /// request on.
    ///
    /// # Errors
    /// `Status` (`FAILED_PRECONDITION` for a destroyed or pending-destruction key).
    pub async fn disable_key(&self, name: &str, version: u32) -> Result<KeyInfo, ClientError> {
        key_call!(
            self,
            disable_key,
            pb::DisableKeyRequest {
                name: name.to_owned(),
                version,
            }
        )
    }

    /// Enables key `name` (`version` 0) or one version again.
    ///
    /// # Errors
    /// `Status` (`FAILED_PRECONDITION` for a destroyed or pending-destruction key).
    pub async fn enable_key(&self, name: &str, version: u32) -> Result<KeyInfo, ClientError> {
        key_call!(
            self,
            enable_key,
            pb::EnableKeyRequest {
                name: name.to_owned(),
                version,
            }
        )
    }

    /// Schedules the destruction of every version's HSM object after `waiting_period`
    /// (`None`: the broker's default, 7 days).
    ///
    /// # Errors
    /// `Status` (`INVALID_ARGUMENT` below the broker's floor, `FAILED_PRECONDITION` when already
    /// scheduled or destroyed).
    pub async fn schedule_key_destruction(
        &self,
        name: &str,
        waiting_period: Option<Duration>,
    ) -> Result<KeyInfo, ClientError> {
        key_call!(
            self,
            schedule_key_destruction,
            pb::ScheduleKeyDestructionRequest {
                name: name.to_owned(),
                waiting_period: waiting_period.map(duration),
            }
        )
    }

    /// Cancels a scheduled destruction; the key is left disabled.
    ///
    /// # Errors
    /// `Status` (`FAILED_PRECONDITION` when nothing is scheduled or the deadline passed).
    pub async fn cancel_key_destruction(&self, name: &str) -> Result<KeyInfo, ClientError> {
        key_call!(
            self,
            cancel_key_destruction,
            pb::CancelKeyDestructionRequest {
                name: name.to_owned(),
            }
        )
    }

    /// Revokes the leases of a job or principal: every further DataKeys call of theirs is
    /// refused (`PERMISSION_DENIED`) until the longest lease has run out.
    ///
    /// # Errors
    /// `Status` (`INVALID_ARGUMENT` for an empty target, `PERMISSION_DENIED`).
    pub async fn revoke_leases(&self, target: &RevokeTarget) -> Result<Revocation, ClientError> {
        let msg = match target {
            RevokeTarget::Job(job) => pb::RevokeLeasesRequest {
                job: job.clone(),
                ..pb::RevokeLeasesRequest::default()
            },
            RevokeTarget::Principal { subject, issuer } => pb::RevokeLeasesRequest {
                subject: subject.clone(),
                issuer: issuer.clone().unwrap_or_default(),
                ..pb::RevokeLeasesRequest::default()
            },
        };
        let (req, rid) = self.request(msg).await?;
        let resp = self
            .key_admin()
            .revoke_leases(req)
            .await
            .map_err(|s| ClientError::from_status(&s, &rid))?
            .into_inner();
        Ok(Revocation {
            leases_revoked: resp.leases_revoked,
            revoked_until: resp.revoked_until.and_then(timestamp),
        })
    }
}
