//! Inputs and outputs of the lifecycle parts of the [`super::Store`] trait: the release gate,
//! lease revocations and key settings.

use super::LeaseRecord;

/// Who is asking, for revocation checks.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    /// Token issuer.
    pub issuer: &'a str,
    /// Subject.
    pub subject: &'a str,
    /// Job id from verified identity.
    pub job_id: Option<&'a str>,
}

/// What a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationTarget {
    /// Every principal carrying this job id (any issuer).
    Job(String),
    /// This subject, of `issuer` (empty: any issuer).
    Principal {
        /// Token issuer, or empty for every issuer.
        issuer: String,
        /// Subject.
        subject: String,
    },
}

/// Inputs of [`super::Store::release`].
#[derive(Debug, Clone, Copy)]
pub struct ReleaseGate<'a> {
    /// Key name.
    pub key: &'a str,
    /// Version a new ciphertext was sealed under (counted as one wrap).
    pub wrap_version: Option<u32>,
    /// Version of a ciphertext that was opened.
    pub open_version: Option<u32>,
    /// Lease of released plaintext.
    pub lease: Option<&'a LeaseRecord>,
    /// The caller.
    pub who: Who<'a>,
    /// Now, on the broker's clock.
    pub now: i64,
}

/// Result of [`super::Store::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOutcome {
    /// Allowed; the wrap count of `wrap_version` after counting (0 when none).
    Open(u64),
    /// Something changed since the request began: release nothing.
    Closed,
}

/// Inputs of [`super::Store::update_settings`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SettingsUpdate {
    /// New `min_decryption_version`.
    pub min_decryption_version: Option<u32>,
    /// New rotation: `(period, next rotation)`, or `None` for off.
    pub rotation: Option<Option<(i64, i64)>>,
}
