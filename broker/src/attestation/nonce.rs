//! One-shot attestation nonces (`DataKeys.GetAttestationNonce`).
//!
//! A nonce is stateless until used: an HMAC under a per-process key binds a random id, its
//! expiry and the caller's identity, so issuing one writes nothing, a nonce fetched by one
//! workload fails for another, and only *used* nonces take memory (until they expire).
//!
//! ```text
//! raw   = 0x01 ‖ id(16 random) ‖ u64be(expires_at) ‖ tag(16)              41 bytes
//! tag   = HMAC-SHA256(K, "keybroker attestation nonce v1" ‖ 0x01 ‖ id ‖ u64be(expires_at)
//!                        ‖ SHA-256(lp(issuer) ‖ lp(subject) ‖ lp(job)))[..16]
//! nonce = base64url(raw), no padding                                       55 characters
//! ```
//!
//! The key lives only in this process: a restart voids outstanding nonces (they live minutes),
//! and with it the used set, which is why it must not outlive the key.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::identity::Principal;

const VERSION: u8 = 1;
const ID_LEN: usize = 16;
const TAG_LEN: usize = 16;
const RAW_LEN: usize = 1 + ID_LEN + 8 + TAG_LEN;
/// Characters of an encoded nonce.
pub(crate) const NONCE_CHARS: usize = 55;
const LABEL: &[u8] = b"keybroker attestation nonce v1";

/// Why a nonce was refused; `as_str` is the audited reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceRefusal {
    /// Not a nonce of ours for this caller (wrong shape, version or tag).
    NotIssuedToCaller,
    /// Past its expiry.
    Expired,
    /// Used before.
    Replayed,
}

impl NonceRefusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::NotIssuedToCaller => "nonce not issued to this caller",
            Self::Expired => "nonce expired",
            Self::Replayed => "nonce replayed",
        }
    }
}

/// A nonce that checked out: its id, when it was issued, when it expires.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked {
    id: [u8; ID_LEN],
    pub(crate) issued_at: u64,
    pub(crate) expires_at: u64,
}

/// Issues and redeems nonces.
pub(crate) struct Nonces {
    key: hmac::Key,
    rng: SystemRandom,
    ttl: u64,
    max_used: usize,
    /// Used ids and their expiry: a replay within the lifetime is refused.
    used: Mutex<HashMap<[u8; ID_LEN], u64>>,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Issuing failed: no randomness, or too many used nonces are still live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IssueError {
    Random,
    Full,
}

impl Nonces {
    /// A fresh key; nonces live `ttl_secs`; at most `max_used` used nonces are remembered.
    ///
    /// # Errors
    /// The system has no randomness.
    pub(crate) fn new(ttl_secs: u64, max_used: usize) -> Result<Self, IssueError> {
        let rng = SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| IssueError::Random)?;
        Ok(Self {
            key,
            rng,
            ttl: ttl_secs,
            max_used,
            used: Mutex::new(HashMap::new()),
        })
    }

    /// A nonce for `caller`, valid until `now + ttl`; returns it and its expiry.
    ///
    /// # Errors
    /// [`IssueError::Full`] while `max_used` used nonces are live (no new one could be
    /// redeemed), [`IssueError::Random`] without randomness.
    pub(crate) fn issue(&self, caller: &Principal, now: u64) -> Result<(String, u64), IssueError> {
        if self.live_used(now) >= self.max_used {
            return Err(IssueError::Full);
        }
        let mut id = [0u8; ID_LEN];
        self.rng.fill(&mut id).map_err(|_| IssueError::Random)?;
        let expires_at = now.saturating_add(self.ttl);
        let mut raw = Vec::with_capacity(RAW_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(&id);
        raw.extend_from_slice(&expires_at.to_be_bytes());
        raw.extend_from_slice(&self.tag(&id, expires_at, caller).as_ref()[..TAG_LEN]);
        Ok((URL_SAFE_NO_PAD.encode(raw), expires_at))
    }

    /// Checks that `nonce` is ours, for `caller`, and not expired at `now` (does not use it).
    ///
    /// # Errors
    /// [`NonceRefusal::NotIssuedToCaller`] or [`NonceRefusal::Expired`].
    pub(crate) fn check(
        &self,
        nonce: &str,
        caller: &Principal,
        now: u64,
    ) -> Result<Checked, NonceRefusal> {
        let raw = (nonce.len() == NONCE_CHARS)
            .then(|| URL_SAFE_NO_PAD.decode(nonce).ok())
            .flatten()
            .filter(|r| r.len() == RAW_LEN && r[0] == VERSION)
            .ok_or(NonceRefusal::NotIssuedToCaller)?;
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&raw[1..=ID_LEN]);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&raw[1 + ID_LEN..1 + ID_LEN + 8]);
        let expires_at = u64::from_be_bytes(exp);
        let tag = self.tag(&id, expires_at, caller);
        // Constant time: the tag is a MAC.
        if !bool::from(tag.as_ref()[..TAG_LEN].ct_eq(&raw[RAW_LEN - TAG_LEN..])) {
            return Err(NonceRefusal::NotIssuedToCaller);
        }
        if now > expires_at {
            return Err(NonceRefusal::Expired);
        }
        Ok(Checked {
            id,
            issued_at: expires_at.saturating_sub(self.ttl),
            expires_at,
        })
    }

    /// Uses `checked` up: the first call succeeds, every later one (until it expires) fails.
    ///
    /// # Errors
    /// [`NonceRefusal::Replayed`].
    pub(crate) fn redeem(&self, checked: Checked, now: u64) -> Result<(), NonceRefusal> {
        match self.used_at(now).entry(checked.id) {
            std::collections::hash_map::Entry::Occupied(_) => Err(NonceRefusal::Replayed),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(checked.expires_at);
                Ok(())
            }
        }
    }

    fn live_used(&self, now: u64) -> usize {
        self.used_at(now).len()
    }

    /// The used set, swept of expired ids when it is full.
    fn used_at(&self, now: u64) -> std::sync::MutexGuard<'_, HashMap<[u8; ID_LEN], u64>> {
        let mut used = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if used.len() >= self.max_used {
            used.retain(|_, exp| *exp >= now);
        }
        used
    }

    fn tag(&self, id: &[u8; ID_LEN], expires_at: u64, caller: &Principal) -> hmac::Tag {
        let mut who = Sha256::new();
        for part in [
            caller.issuer.as_str(),
            caller.subject.as_str(),
            caller.job_id.as_deref().unwrap_or(""),
        ] {
            who.update((part.len() as u64).to_be_bytes());
            who.update(part.as_bytes());
        }
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(LABEL);
        ctx.update(&[VERSION]);
        ctx.update(id);
        ctx.update(&expires_at.to_be_bytes());
        ctx.update(&who.finalize());
        ctx.sign()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(subject: &str) -> Principal {
        Principal {
            issuer: "https://issuer.test".into(),
            subject: subject.into(),
            ..Principal::default()
        }
    }

    #[test]
    fn a_nonce_works_once_for_its_caller_until_it_expires() {
        let n = Nonces::new(300, 10).unwrap();
        let (nonce, exp) = n.issue(&who("a"), 1000).unwrap();
        assert_eq!(nonce.len(), NONCE_CHARS);
        assert_eq!(exp, 1300);
        assert_eq!(
            n.check(&nonce, &who("b"), 1001).unwrap_err(),
            NonceRefusal::NotIssuedToCaller
        );
        let c = n.check(&nonce, &who("a"), 1001).unwrap();
        assert_eq!(c.issued_at, 1000);
        n.redeem(c, 1001).unwrap();
        let again = n.check(&nonce, &who("a"), 1002).unwrap();
        assert_eq!(n.redeem(again, 1002), Err(NonceRefusal::Replayed));
        let (late, _) = n.issue(&who("a"), 1000).unwrap();
        assert_eq!(
            n.check(&late, &who("a"), 1301).unwrap_err(),
            NonceRefusal::Expired
        );
    }

    #[test]
    fn another_process_key_or_a_changed_byte_is_refused() {
        let n = Nonces::new(300, 10).unwrap();
        let other = Nonces::new(300, 10).unwrap();
        let (nonce, _) = n.issue(&who("a"), 1000).unwrap();
        assert!(other.check(&nonce, &who("a"), 1000).is_err());
        let mut raw = URL_SAFE_NO_PAD.decode(&nonce).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 1;
            let bad = URL_SAFE_NO_PAD.encode(&raw);
            assert!(n.check(&bad, &who("a"), 1000).is_err(), "byte {i}");
            raw[i] ^= 1;
        }
        for junk in ["", "x", &"A".repeat(55), &format!("{nonce}A"), &nonce[1..]] {
            assert_eq!(
                n.check(junk, &who("a"), 1000).unwrap_err(),
                NonceRefusal::NotIssuedToCaller
            );
        }
    }

    #[test]
    fn a_full_used_set_refuses_new_nonces_until_entries_expire() {
        let n = Nonces::new(10, 2).unwrap();
        for _ in 0..2 {
            let (nonce, _) = n.issue(&who("a"), 100).unwrap();
            let c = n.check(&nonce, &who("a"), 100).unwrap();
            n.redeem(c, 100).unwrap();
        }
        assert_eq!(n.issue(&who("a"), 105), Err(IssueError::Full));
        assert!(n.issue(&who("a"), 111).is_ok(), "expired entries are swept");
    }
}
