//! Decisions remembered per exact input.
//!
//! A Cedar decision is a pure function of the policy set and the request: the workload's
//! attributes, the action, the key's facts and the encryption context (no clock, no request
//! id). Building the request and entity set, with its schema checks, cost ≈8 % of the broker's
//! CPU per call under load while a training job asks the same question again and again. So
//! each engine remembers its decisions under a SHA-256 of an unambiguous encoding of exactly
//! the fields [`super::input::build`] reads; a policy reload makes a new engine, and with it an
//! empty memo. Errors are never remembered.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::{Action, Decision, KeyFacts};
use crate::identity::Principal;

/// Most decisions remembered; a full memo starts over.
pub(super) const MAX_ENTRIES: usize = 4096;

/// The memo key of one request.
pub(super) type InputDigest = [u8; 32];

/// The digest of everything a key decision depends on. Every string is length-prefixed and
/// every optional value tagged, so no two different inputs encode alike.
pub(super) fn digest(
    principal: &Principal,
    action: Action,
    key: &KeyFacts<'_>,
    context: &BTreeMap<String, String>,
) -> InputDigest {
    let mut h = Sha256::new();
    let mut put = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put("keybroker-policy-memo-v1");
    put(action.as_str());
    // The workload (every attribute of `input::workload_attrs`, in its order).
    put(&principal.issuer);
    put(&principal.subject);
    for v in [
        &principal.namespace,
        &principal.service_account,
        &principal.spiffe_id,
        &principal.cluster,
        &principal.region,
        &principal.jurisdiction,
        &principal.job_id,
    ] {
        match v {
            Some(v) => {
                put("some");
                put(v);
            }
            None => put("none"),
        }
    }
    // The key.
    put(key.name);
    put(key.purpose);
    put(key.hsm_jurisdiction);
    put(&key.labels.len().to_string());
    for (k, v) in key.labels {
        put(k);
        put(v);
    }
    // The encryption context.
    put(&context.len().to_string());
    for (k, v) in context {
        put(k);
        put(v);
    }
    h.finalize().into()
}

/// The remembered decisions of one engine.
#[derive(Debug, Default)]
pub(super) struct Memo {
    decisions: Mutex<HashMap<InputDigest, Decision>>,
}

impl Memo {
    /// The decision remembered for `digest`. A poisoned lock is a miss.
    pub(super) fn get(&self, digest: &InputDigest) -> Option<Decision> {
        self.decisions.lock().ok()?.get(digest).cloned()
    }

    /// Remembers `decision` for `digest`.
    pub(super) fn insert(&self, digest: InputDigest, decision: &Decision) {
        if let Ok(mut map) = self.decisions.lock() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(digest, decision.clone());
        }
    }

    /// Decisions remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.decisions.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::input::workload_attrs;

    fn base() -> Principal {
        Principal {
            issuer: "https://k8s.example.eu".into(),
            subject: "system:serviceaccount:ml:trainer".into(),
            namespace: Some("ml".into()),
            service_account: Some("trainer".into()),
            spiffe_id: Some("spiffe://eu/ns/ml/sa/trainer".into()),
            cluster: Some("a".into()),
            region: Some("eu-west-1".into()),
            jurisdiction: Some("EU".into()),
            job_id: Some("job-1".into()),
            ..Principal::default()
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn d(p: &Principal, a: Action, labels: &[(&str, &str)], ctx: &[(&str, &str)]) -> InputDigest {
        let labels = map(labels);
        let key = KeyFacts {
            name: "datasets/x",
            purpose: "datakey",
            labels: &labels,
            hsm_jurisdiction: "EU",
        };
        digest(p, a, &key, &map(ctx))
    }

    #[test]
    fn the_memo_key_covers_exactly_the_workload_attributes_policy_sees() {
        // If policy input gains an attribute, this list and `digest` must both grow.
        let names: Vec<String> = workload_attrs(&base())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            names,
            [
                "issuer",
                "subject",
                "namespace",
                "service_account",
                "spiffe_id",
                "cluster",
                "region",
                "jurisdiction",
                "job"
            ]
        );
        let a = Action::GenerateDataKey;
        let reference = d(&base(), a, &[], &[]);
        let edits: [fn(&mut Principal); 10] = [
            |p| p.issuer.push('x'),
            |p| p.subject.push('x'),
            |p| p.namespace = None,
            |p| p.service_account = Some(String::new()),
            |p| p.spiffe_id = None,
            |p| p.cluster = Some("b".into()),
            |p| p.region = Some("us-east-1".into()),
            |p| p.jurisdiction = Some("US".into()),
            |p| p.job_id = Some("job-2".into()),
            |p| p.job_id = None,
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut p = base();
            edit(&mut p);
            assert_ne!(
                d(&p, a, &[], &[]),
                reference,
                "edit {i} not in the memo key"
            );
        }
        // `None` and `Some("")` are different inputs to the digest (policy sees "" for both,
        // so this only costs a miss).
        assert_ne!(d(&base(), Action::Decrypt, &[], &[]), reference);
    }

    #[test]
    fn labels_and_context_encode_unambiguously() {
        let p = base();
        let a = Action::Decrypt;
        let all = [
            d(&p, a, &[("a", "bc")], &[]),
            d(&p, a, &[("ab", "c")], &[]),
            d(&p, a, &[], &[("a", "bc")]),
            d(&p, a, &[("a", "b")], &[("c", "d")]),
            d(&p, a, &[("a", "b"), ("c", "d")], &[]),
            d(&p, a, &[], &[("a", "b"), ("c", "d")]),
            d(&p, a, &[], &[]),
        ];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn a_full_memo_starts_over() {
        let memo = Memo::default();
        let decision = Decision {
            allowed: true,
            reasons: vec![],
            policy_sha256: String::new(),
        };
        for i in 0..=MAX_ENTRIES {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            memo.insert(key, &decision);
        }
        assert_eq!(memo.len(), 1);
    }
}
