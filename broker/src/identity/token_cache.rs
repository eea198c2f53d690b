//! Verified tokens, remembered until they expire.
//!
//! A workload sends the same token with every call until its kubelet or SPIRE agent rotates
//! it, so the JSON parsing and the signature check (≈7 % of the broker's CPU per call under
//! load) give the same answer every time. An entry is found only for the exact token bytes
//! (keyed by SHA-256, so the map holds no token) and only while the issuer's *current* key set
//! is the very set that verified it: a JWKS refresh, rotation or removal of the key makes every
//! entry of that issuer a miss and the token is checked in full again. The time rules (`exp`,
//! `nbf`, `iat`, lifetime, audience) run on every hit, so a cached token stops working at the
//! same second as an uncached one. Refusals are never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::Principal;
use super::claims::Claims;
use super::jwks::KeyMap;

/// Most tokens remembered. At ~1 KiB an entry this bounds the cache near 4 MiB; a full cache
/// first drops expired entries, then everything (a burst of fresh tokens costs one full check
/// each, as without the cache).
pub(crate) const MAX_ENTRIES: usize = 4096;

/// What a full check established about one token.
#[derive(Clone)]
pub(crate) struct Verified {
    /// The `iss` the token named (the key into the verifier's issuers).
    pub(crate) issuer: String,
    /// The key set that verified the signature.
    pub(crate) keys: Arc<KeyMap>,
    /// Its claims, for the time rules on every hit.
    pub(crate) claims: Claims,
    /// The principal it maps to.
    pub(crate) principal: Principal,
}

/// SHA-256 of a token.
pub(crate) type TokenDigest = [u8; 32];

/// The digest under which `token` is remembered.
pub(crate) fn digest(token: &str) -> TokenDigest {
    Sha256::digest(token.as_bytes()).into()
}

/// The cache; shared by every request through the verifier.
#[derive(Default)]
pub(crate) struct TokenCache {
    entries: Mutex<HashMap<TokenDigest, Verified>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.len())
            .finish()
    }
}

impl TokenCache {
    /// The entry for `digest`, if any. A poisoned lock is a miss.
    pub(crate) fn get(&self, digest: &TokenDigest) -> Option<Verified> {
        self.entries.lock().ok()?.get(digest).cloned()
    }

    /// Remembers a token that passed every check at unix time `now`.
    pub(crate) fn insert(&self, digest: TokenDigest, verified: Verified, now: u64) {
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, v| v.claims.exp > now);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(digest, verified);
    }

    /// Forgets `digest` (its token failed a time rule, or its key set changed).
    pub(crate) fn remove(&self, digest: &TokenDigest) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(digest);
        }
    }

    /// Tokens remembered.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(exp: u64) -> Verified {
        Verified {
            issuer: "https://issuer.test".into(),
            keys: Arc::new(KeyMap::new()),
            claims: Claims {
                iss: "https://issuer.test".into(),
                sub: "s".into(),
                aud: vec!["keybroker".into()],
                exp,
                nbf: None,
                iat: Some(1),
                k8s: None,
                job: None,
            },
            principal: Principal::default(),
        }
    }

    #[test]
    fn a_full_cache_drops_expired_entries_before_live_ones() {
        let cache = TokenCache::default();
        for i in 0..MAX_ENTRIES {
            // Half expired at now = 100, half alive.
            let exp = if i % 2 == 0 { 50 } else { 500 };
            cache.insert(digest(&i.to_string()), entry(exp), 10);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        cache.insert(digest("new"), entry(500), 100);
        assert_eq!(cache.len(), MAX_ENTRIES / 2 + 1);
        assert!(cache.get(&digest("1")).is_some());
        assert!(cache.get(&digest("0")).is_none());
    }

    #[test]
    fn a_full_cache_of_live_entries_starts_over_and_never_grows_past_the_bound() {
        let cache = TokenCache::default();
        for i in 0..=MAX_ENTRIES {
            cache.insert(digest(&i.to_string()), entry(500), 10);
        }
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&digest(&MAX_ENTRIES.to_string())).is_some());
    }
}
