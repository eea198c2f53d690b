//! JWT verification with issuer-pinned JWKS (a file, or a URL cached by [`super::remote`]).
//!
//! Cheap structural checks come before any signature work: size, shape, header fields (only
//! `alg`, `kid`, `typ`), duplicate JSON keys, known issuer, `kid`, algorithm. Then the signature
//! (jsonwebtoken's primitive, nothing else of its validation), then our own typed claim rules
//! in [`super::claims`], so every edge is ours and tested.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::claims::{self, IssuerFacts, Rules};
use super::jwks::KeyMap;
use super::jws::{self, HeaderRules, KeySource, Keys, Refusal};
use super::remote::{Clock, Limits, RemoteJwks};
use super::token_cache::{self, TokenCache, Verified};
use super::{IdentityError, Principal, Reason};
use crate::config::JwksSource;

/// Largest token accepted, before any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Workload tokens: at most 8 KiB, header `alg`, `kid` (required), `typ` only.
const HEADER_RULES: HeaderRules = HeaderRules {
    max_len: MAX_TOKEN_LEN,
    jku: false,
};

// Here, not in `config`: the config parser stays free of the JWT library (it is fuzzed alone).
impl From<crate::config::JwtAlgorithm> for Algorithm {
    fn from(a: crate::config::JwtAlgorithm) -> Self {
        use crate::config::JwtAlgorithm;
        match a {
            JwtAlgorithm::Rs256 => Self::RS256,
            JwtAlgorithm::Ps256 => Self::PS256,
            JwtAlgorithm::Ps384 => Self::PS384,
            JwtAlgorithm::Es256 => Self::ES256,
            JwtAlgorithm::EdDsa => Self::EdDSA,
        }
    }
}

/// One trusted issuer.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// `iss` value.
    pub issuer: String,
    /// Accepted `aud` values (a token must carry exactly one of them).
    pub audiences: Vec<String>,
    /// Where the keys come from.
    pub jwks: JwksSource,
    /// Allowed algorithms (never `none`, never HMAC).
    pub algorithms: Vec<Algorithm>,
    /// Longest accepted `exp - iat`.
    pub max_token_lifetime: Duration,
    /// Clock skew tolerance (at most 30 s).
    pub leeway: Duration,
    /// Claim carrying the job id, if this issuer has one.
    pub job_claim: Option<String>,
    /// Cluster whose workloads this issuer vouches for.
    pub cluster: Option<String>,
    /// Region of that cluster.
    pub region: Option<String>,
    /// Claim carrying the caller's region, which wins over `region` when a token has it.
    pub region_claim: Option<String>,
    /// Jurisdiction of that cluster.
    pub jurisdiction: Option<String>,
}

struct Issuer {
    settings: IssuerSettings,
    facts: IssuerFacts,
    keys: Keys,
}

/// Verifies bearer tokens against the configured issuers.
pub struct JwtVerifier {
    issuers: HashMap<String, Issuer>,
    verified: TokenCache,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl JwtVerifier {
    /// Loads every issuer's JWKS file and prepares (without fetching) every JWKS URL.
    ///
    /// # Errors
    /// A JWKS file is unreadable, is not a JWKS, or holds a key without `kid` or `alg`; a
    /// JWKS CA file is unusable.
    pub fn new(settings: Vec<IssuerSettings>) -> Result<Self, IdentityError> {
        Self::with_limits(settings, Limits::default(), &Clock::default())
    }

    pub(crate) fn with_limits(
        settings: Vec<IssuerSettings>,
        limits: Limits,
        clock: &Clock,
    ) -> Result<Self, IdentityError> {
        let mut issuers = HashMap::new();
        for s in settings {
            let keys =
                Keys::load(&s.issuer, &s.jwks, limits, clock).map_err(|(path, problem)| {
                    IdentityError::Jwks {
                        issuer: s.issuer.clone(),
                        path,
                        problem,
                    }
                })?;
            let facts = IssuerFacts {
                cluster: s.cluster.clone(),
                region: s.region.clone(),
                jurisdiction: s.jurisdiction.clone(),
            };
            issuers.insert(
                s.issuer.clone(),
                Issuer {
                    settings: s,
                    facts,
                    keys,
                },
            );
        }
        Ok(Self {
            issuers,
            verified: TokenCache::default(),
        })
    }

    pub(crate) fn remotes(&self) -> impl Iterator<Item = &Arc<RemoteJwks>> {
        self.issuers.values().filter_map(|i| i.keys.remote())
    }

    /// Per issuer: JWKS fetch attempts and failed fetches since start (for metrics; always 0
    /// for an issuer whose keys are a file, so every issuer has a sample).
    pub(crate) fn jwks_stats(&self) -> Vec<(String, u64, u64)> {
        self.issuers
            .iter()
            .map(|(name, i)| match &i.keys {
                Keys::Remote(r) => {
                    let (fetches, failures) = r.stats();
                    (name.clone(), fetches, failures)
                }
                Keys::Static(_) => (name.clone(), 0, 0),
            })
            .collect()
    }

    /// First fetch of every JWKS URL, concurrently. A failure is logged, not returned: the
    /// broker starts, that issuer's tokens are refused until a fetch succeeds, and the
    /// background refresh keeps retrying.
    pub async fn prefetch(&self) {
        let mut set = tokio::task::JoinSet::new();
        for r in self.remotes() {
            let r = r.clone();
            set.spawn(async move { r.refresh_if_due().await });
        }
        while set.join_next().await.is_some() {}
    }

    /// Starts one background refresh task per JWKS URL on `tasks`, stopped by `cancel`.
    pub fn spawn_refresh(&self, tasks: &TaskTracker, cancel: &CancellationToken) {
        for r in self.remotes() {
            tasks.spawn(r.clone().run(cancel.clone()));
        }
    }

    /// Verifies `token` at unix time `now` against the cached keys and maps it to a
    /// [`Principal`]. Never fetches; see [`JwtVerifier::verify_refreshing`].
    ///
    /// # Errors
    /// [`IdentityError::Invalid`] with the [`Reason`] for any token that is not exactly right.
    pub fn verify(&self, token: &str, now: u64) -> Result<Principal, IdentityError> {
        self.check(token, now)
            .map_err(|r| IdentityError::Invalid(r.reason))
    }

    /// As [`JwtVerifier::verify`], but a `kid` missing from a JWKS URL's cached set triggers
    /// one refetch (single flight, at most one per cooldown) before the token is refused.
    ///
    /// # Errors
    /// As [`JwtVerifier::verify`].
    pub async fn verify_refreshing(
        &self,
        token: &str,
        now: u64,
    ) -> Result<Principal, IdentityError> {
        match self.check(token, now) {
            Ok(p) => Ok(p),
            Err(Refusal {
                refetch: Some((remote, kid)),
                reason,
            }) => {
                if remote.refetch_for(&kid).await {
                    self.verify(token, now)
                } else {
                    Err(IdentityError::Invalid(reason))
                }
            }
            Err(r) => Err(IdentityError::Invalid(r.reason)),
        }
    }

    /// Tokens in the verified-token cache.
    #[cfg(test)]
    pub(crate) fn cached_tokens(&self) -> usize {
        self.verified.len()
    }

    fn check(&self, token: &str, now: u64) -> Result<Principal, Refusal> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Reason::TooLarge.into());
        }
        let digest = token_cache::digest(token);
        if let Some(hit) = self.verified.get(&digest) {
            if let Some(issuer) = self.issuers.get(&hit.issuer)
                && issuer.holds(&hit.keys)
            {
                return match claims::check(&hit.claims, issuer.rules(), now) {
                    Ok(()) => Ok(hit.principal),
                    Err(reason) => {
                        self.verified.remove(&digest);
                        Err(reason.into())
                    }
                };
            }
            // The key set changed since: check the token in full again.
            self.verified.remove(&digest);
        }
        let verified = self.check_in_full(token, now)?;
        let principal = verified.principal.clone();
        self.verified.insert(digest, verified, now);
        Ok(principal)
    }

    fn check_in_full(&self, token: &str, now: u64) -> Result<Verified, Refusal> {
        let mut found = None;
        let jws::Signed { payload, keys } = jws::verify(token, HEADER_RULES, |payload| {
            let issuer = self
                .issuers
                .get(claims::issuer(payload)?)
                .ok_or(Reason::UnknownIssuer)?;
            found = Some(issuer);
            Ok(KeySource {
                keys: &issuer.keys,
                algorithms: &issuer.settings.algorithms,
                jku: None,
                kid_optional: false,
            })
        })?;
        let issuer = found.ok_or(Reason::UnknownIssuer)?;
        let c = claims::parse(&payload, issuer.settings.job_claim.as_deref())?;
        claims::check(&c, issuer.rules(), now)?;
        let mut principal = claims::principal(c.clone(), &issuer.facts)?;
        if let Some(region) = claims::region(&payload, issuer.settings.region_claim.as_deref())? {
            principal.region = Some(region);
        }
        Ok(Verified {
            issuer: issuer.settings.issuer.clone(),
            keys,
            principal,
            claims: c,
        })
    }
}

impl Issuer {
    fn rules(&self) -> Rules<'_> {
        let s = &self.settings;
        Rules {
            audiences: &s.audiences,
            leeway: s.leeway.as_secs(),
            max_lifetime: s.max_token_lifetime.as_secs(),
        }
    }

    /// Whether `keys` is still this issuer's current key set (the very same set, not an equal
    /// one: a refresh makes a new set, and cached verdicts of the old one are not reused).
    fn holds(&self, keys: &Arc<KeyMap>) -> bool {
        self.keys.holds(keys)
    }
}
