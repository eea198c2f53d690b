//! Attested key release (docs/attestation.md): attestation results from configured verifiers as
//! a second credential next to workload identity, one-shot nonces for freshness, and the facts
//! policy and audit see.

pub(crate) mod profiles;
