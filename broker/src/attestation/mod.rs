//! Attested key release (docs/attestation.md): attestation results from configured verifiers as
//! a second credential next to workload identity, one-shot nonces for freshness, and the facts
//! policy and audit see.
//!
//! A result is checked in this order, and the first failure is the audited reason: JWS
//! structure and signature (the same code as workload JWTs, [`crate::identity::jws`]), the
//! verifier's claim profile ([`profiles`]), the nonce (ours, for this caller, not expired), the
//! result's age and expiry, the nonce binding, and last the nonce is used up — so a result that
//! passed every check cannot be presented twice, whatever policy then decides.

pub(crate) mod nonce;
pub(crate) mod profiles;
#[cfg(test)]
mod tests;

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AttestationConfig, AttestationProfile};
use crate::identity::Principal;
use crate::identity::jws::{self, HeaderRules, KeySource, Keys};
use crate::identity::remote::{Clock, Limits};
use nonce::{IssueError, Nonces};
use profiles::{BoundKey, NonceBinding, Profile};

/// The metadata key carrying an attestation result.
pub(crate) const METADATA_KEY: &str = "x-keybroker-attestation";

/// What a verified attestation result says, for policy and audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The configured verifier's name.
    pub(crate) verifier: String,
    /// Its profile's config name.
    pub(crate) profile: &'static str,
    pub(crate) tee: &'static str,
    pub(crate) measurement: String,
    pub(crate) debug: bool,
    pub(crate) tcb_status: String,
    pub(crate) age_seconds: u64,
    pub(crate) nonce_binding: &'static str,
    /// The TEE-bound public key, if the result carries one.
    pub(crate) recipient: Option<BoundKey>,
}

/// Why a result was refused: the audited reason, and the verifier when one was picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) verifier: Option<String>,
    pub(crate) reason: String,
}

impl Refusal {
    fn new(verifier: Option<&Verifier>, reason: impl Into<String>) -> Self {
        Self {
            verifier: verifier.map(|v| v.name.clone()),
            reason: reason.into(),
        }
    }
}

struct Verifier {
    name: String,
    config_profile: AttestationProfile,
    profile: Profile,
    issuer: Option<String>,
    keys: Keys,
    jku: Option<String>,
    algorithms: Vec<Algorithm>,
    require_evidence_nonce: bool,
    max_token_bytes: usize,
    leeway: u64,
}

/// The configured verifiers and the nonce service.
pub(crate) struct Attestation {
    verifiers: Vec<Verifier>,
    nonces: Nonces,
    max_age: u64,
    max_token_bytes: usize,
}

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestation")
            .field(
                "verifiers",
                &self.verifiers.iter().map(|v| &v.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Setting up attestation failed.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// A verifier's JWKS could not be loaded.
    #[error("attestation verifier {verifier}: cannot load JWKS {path}: {problem}")]
    Jwks {
        /// Verifier name.
        verifier: String,
        /// JWKS file or URL.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// The system has no randomness for the nonce key.
    #[error("attestation: no randomness for the nonce key")]
    Random,
}

impl Attestation {
    /// Loads every verifier's keys (files now, URLs prepared) and makes a nonce key.
    ///
    /// # Errors
    /// [`AttestationError`].
    pub(crate) fn new(config: &AttestationConfig) -> Result<Self, AttestationError> {
        let clock = Clock::default();
        let mut verifiers = Vec::with_capacity(config.verifiers.len());
        for v in &config.verifiers {
            let keys = Keys::load(&v.name, &v.jwks, Limits::default(), &clock).map_err(
                |(path, problem)| AttestationError::Jwks {
                    verifier: v.name.clone(),
                    path,
                    problem,
                },
            )?;
            verifiers.push(Verifier {
                name: v.name.clone(),
                config_profile: v.profile,
                profile: match v.profile {
                    AttestationProfile::EarTrustee => Profile::Ear(profiles::EarLayout::Trustee),
                    AttestationProfile::IntelTrustAuthority => Profile::IntelTrustAuthority,
                    AttestationProfile::AzureAttestation => Profile::AzureAttestation,
                },
                issuer: v.issuer.clone(),
                keys,
                jku: match &v.jwks {
                    crate::config::JwksSource::Url { url, .. } => Some(url.clone()),
                    crate::config::JwksSource::File(_) => None,
                },
                algorithms: v.algorithms.iter().map(|a| (*a).into()).collect(),
                require_evidence_nonce: v.require_evidence_nonce,
                max_token_bytes: v.max_token_bytes,
                leeway: v.leeway.as_secs(),
            });
        }
        let nonces = Nonces::new(config.nonce_ttl.as_secs(), config.max_outstanding_nonces)
            .map_err(|_| AttestationError::Random)?;
        Ok(Self {
            max_token_bytes: verifiers
                .iter()
                .map(|v| v.max_token_bytes)
                .max()
                .unwrap_or(0),
            verifiers,
            nonces,
            max_age: config.max_age.as_secs(),
        })
    }

    /// A nonce for `caller` and its expiry (unix seconds).
    ///
    /// # Errors
    /// Too many used nonces are live, or no randomness.
    pub(crate) fn nonce(&self, caller: &Principal, now: u64) -> Result<(String, u64), IssueError> {
        self.nonces.issue(caller, now)
    }

    /// First fetch of every JWKS URL (failures are logged by the cache and retried).
    pub(crate) async fn prefetch(&self) {
        for r in self.verifiers.iter().filter_map(|v| v.keys.remote()) {
            r.refresh_if_due().await;
        }
    }

    /// One background refresh task per JWKS URL.
    pub(crate) fn spawn_refresh(&self, tasks: &TaskTracker, cancel: &CancellationToken) {
        for r in self.verifiers.iter().filter_map(|v| v.keys.remote()) {
            tasks.spawn(r.clone().run(cancel.clone()));
        }
    }

    /// Checks the result `token` presented by `caller` at unix time `now`, and uses its nonce.
    ///
    /// # Errors
    /// The [`Refusal`], with its audited reason.
    pub(crate) async fn check(
        &self,
        token: &str,
        caller: &Principal,
        now: u64,
    ) -> Result<Facts, Refusal> {
        let (verifier, payload) = match self.signed(token) {
            Ok(found) => found,
            Err((verifier, refusal)) => {
                // A kid the cached JWKS lacks: one refetch (rate-limited by the cache), then
                // once more.
                let Some((remote, kid)) = refusal.refetch else {
                    return Err(Refusal::new(verifier, refusal.reason.to_string()));
                };
                if !remote.refetch_for(&kid).await {
                    return Err(Refusal::new(verifier, refusal.reason.to_string()));
                }
                self.signed(token)
                    .map_err(|(v, r)| Refusal::new(v, r.reason.to_string()))?
            }
        };
        let refuse = |reason: &str| Refusal::new(Some(verifier), reason);
        let mapped = profiles::map(verifier.profile, &payload).map_err(|r| refuse(&r.as_str()))?;
        let (iat, exp) = (&mapped.iat, &mapped.exp);
        let (nonce, binding) = mapped
            .nonce
            .clone()
            .ok_or_else(|| refuse("nonce missing"))?;
        let nonce = &nonce;
        let checked = self
            .nonces
            .check(nonce, caller, now)
            .map_err(|r| refuse(r.as_str()))?;
        if *iat > now.saturating_add(verifier.leeway) {
            return Err(refuse("issued in the future"));
        }
        let age = now.saturating_sub(*iat);
        if age > self.max_age {
            return Err(refuse("result too old"));
        }
        if iat.saturating_add(verifier.leeway) < checked.issued_at {
            return Err(refuse("result predates nonce"));
        }
        if exp.is_some_and(|exp| now > exp.saturating_add(verifier.leeway)) {
            return Err(refuse("result expired"));
        }
        if verifier.require_evidence_nonce && binding != NonceBinding::Evidence {
            return Err(refuse("nonce not bound to evidence"));
        }
        self.nonces
            .redeem(checked, now)
            .map_err(|r| refuse(r.as_str()))?;
        Ok(Facts {
            verifier: verifier.name.clone(),
            profile: verifier.config_profile.as_str(),
            tee: mapped.tee.as_str(),
            measurement: mapped.measurement,
            debug: mapped.debug,
            tcb_status: mapped.tcb_status,
            age_seconds: age,
            nonce_binding: binding.as_str(),
            recipient: mapped.recipient,
        })
    }

    /// The signature check, picking the verifier by `iss`.
    #[allow(clippy::type_complexity)]
    fn signed(
        &self,
        token: &str,
    ) -> Result<(&Verifier, Map<String, Value>), (Option<&Verifier>, jws::Refusal)> {
        let mut picked = None;
        let rules = HeaderRules {
            max_len: self.max_token_bytes,
            jku: true,
        };
        let signed = jws::verify(token, rules, |payload| {
            let iss = match payload.get("iss") {
                None => None,
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => return Err(crate::identity::Reason::ClaimType("iss")),
            };
            let v = self
                .verifiers
                .iter()
                .find(|v| v.issuer.as_deref() == iss)
                .ok_or(crate::identity::Reason::UnknownIssuer)?;
            picked = Some(v);
            Ok(KeySource {
                keys: &v.keys,
                algorithms: &v.algorithms,
                jku: v.jku.as_deref(),
                kid_optional: true,
            })
        });
        match (signed, picked) {
            (Ok(s), Some(v)) if token.len() <= v.max_token_bytes => Ok((v, s.payload)),
            (Ok(_), v) => Err((v, crate::identity::Reason::TooLarge.into())),
            (Err(r), v) => Err((v, r)),
        }
    }
}
