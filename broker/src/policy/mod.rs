//! Policy as code: Cedar policies validated against our schema, evaluated in-process.
//!
//! Default deny; a `forbid` wins over any `permit`; every policy carries an `@id` that is the
//! reason reported for a decision. The policy text's sha256 travels with every decision so the
//! audit record can name exactly which policy decided. Loading is the only I/O here.

#[cfg(test)]
mod attestation_tests;
mod input;
mod memo;
mod signing;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use cedar_policy::{Authorizer, PolicySet, Schema};

use crate::identity::Principal;

pub use input::{AttestationFacts, KeyFacts, XksRequestFacts};
/// The Cedar actions: the one operation list, shared with the audit records and clients.
pub use keybroker_formats::ops::{Action, AuditAction, SignAction};
pub use signing::SigningFacts;
pub use slot::{PolicySlot, Reloaded};

/// The schema every policy is validated against.
pub use keybroker_formats::policy::SCHEMA;
/// The built-in default policy (used when the config names no policy file).
pub const DEFAULT_POLICY: &str = include_str!("../../policy/default.cedar");
/// The dev policy: namespace `dev` may do anything. Written by `keybrokerd dev`.
pub const DEV_POLICY: &str = include_str!("../../policy/dev.cedar");

/// Errors of loading or evaluating a policy. Load errors name the origin and the problem.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file cannot be read.
    #[error("policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The policy does not parse or validate (the same check as `keybroker policy check`).
    #[error(transparent)]
    Check(#[from] keybroker_formats::policy::PolicyCheckError),
    /// A request could not be expressed in the schema (a defect in input building).
    #[error("policy request: {0}")]
    Request(String),
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// `@id`s of the policies that decided (the permits for an allow, the forbids for an
    /// explicit deny; empty for a default deny).
    pub reasons: Vec<String>,
    /// sha256 (hex) of the policy text that decided.
    pub policy_sha256: String,
}

/// A loaded, schema-validated policy.
pub struct PolicyEngine {
    schema: Schema,
    policies: PolicySet,
    sha256: String,
    authorizer: Authorizer,
    memo: memo::Memo,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Reads and validates the policy file at `path`.
    ///
    /// # Errors
    /// [`PolicyError::Read`], or as [`PolicyEngine::from_text`].
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_text(&text, &path.display().to_string())
    }

    /// Parses `text` (named `origin` in messages) and validates it against [`SCHEMA`].
    ///
    /// # Errors
    /// [`PolicyError::Check`] for syntax, schema violations (a misspelt attribute, a wrong
    /// type, an unknown action) and missing or duplicate `@id`s.
    pub fn from_text(text: &str, origin: &str) -> Result<Self, PolicyError> {
        let checked = keybroker_formats::policy::check(text, origin)?;
        Ok(Self {
            schema: checked.schema,
            policies: checked.policies,
            sha256: checked.sha256,
            authorizer: Authorizer::new(),
            memo: memo::Memo::default(),
        })
    }

    /// The built-in default policy.
    ///
    /// # Errors
    /// Only if the shipped policy is broken (tests load it).
    pub fn builtin() -> Result<Self, PolicyError> {
        Self::from_text(DEFAULT_POLICY, "built-in default")
    }

    /// sha256 (hex) of the policy text.
    #[must_use]
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Decides whether `principal` may perform `action` on `key` with encryption `context`.
    ///
    /// # Errors
    /// [`PolicyError::Request`] when the input cannot be expressed in the schema; callers
    /// treat that as a deny.
    pub fn decide(
        &self,
        principal: &Principal,
        action: Action,
        key: &KeyFacts<'_>,
        context: &BTreeMap<String, String>,
    ) -> Result<Decision, PolicyError> {
        let digest = memo::digest(principal, action, key, context);
        if let Some(decision) = self.memo.get(&digest) {
            return Ok(decision);
        }
        let (request, entities) =
            input::build(&self.schema, principal, action, key, context, None, None)?;
        let decision = self.evaluate(&request, &entities);
        self.memo.insert(digest, &decision);
        Ok(decision)
    }

    /// Decides an XKS proxy API call: `principal` is the key store, `xks` what AWS KMS said
    /// about the call (`context.xks`). Not remembered: the request metadata differs per call.
    ///
    /// # Errors
    /// [`PolicyError::Request`] when the input cannot be expressed in the schema; callers
    /// treat that as a deny.
    pub fn decide_xks(
        &self,
        principal: &Principal,
        action: Action,
        key: &KeyFacts<'_>,
        xks: &XksRequestFacts<'_>,
    ) -> Result<Decision, PolicyError> {
        let (request, entities) = input::build(
            &self.schema,
            principal,
            action,
            key,
            &BTreeMap::new(),
            Some(xks),
            None,
        )?;
        Ok(self.evaluate(&request, &entities))
    }

    /// Decides a DataKeys call that carried a verified attestation result (`context.attestation`,
    /// and `context.recipient_release` when the key leaves sealed to the TEE). Not remembered:
    /// the result's age changes every second, and a remembered decision must never answer a
    /// call without attestation.
    ///
    /// # Errors
    /// [`PolicyError::Request`] when the input cannot be expressed in the schema; callers
    /// treat that as a deny.
    pub fn decide_attested(
        &self,
        principal: &Principal,
        action: Action,
        key: &KeyFacts<'_>,
        context: &BTreeMap<String, String>,
        attestation: &AttestationFacts<'_>,
        recipient_release: bool,
    ) -> Result<Decision, PolicyError> {
        let (request, entities) = input::build(
            &self.schema,
            principal,
            action,
            key,
            context,
            None,
            Some((attestation, recipient_release)),
        )?;
        Ok(self.evaluate(&request, &entities))
    }

    /// Decisions this engine remembers.
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.memo.len()
    }

    /// Decides whether `principal` may read the audit log as `action`.
    ///
    /// # Errors
    /// [`PolicyError::Request`] when the input cannot be expressed in the schema; callers
    /// treat that as a deny.
    pub fn decide_audit(
        &self,
        principal: &Principal,
        action: AuditAction,
    ) -> Result<Decision, PolicyError> {
        let (request, entities) = input::build_audit(&self.schema, principal, action)?;
        Ok(self.evaluate(&request, &entities))
    }

    fn evaluate(
        &self,
        request: &cedar_policy::Request,
        entities: &cedar_policy::Entities,
    ) -> Decision {
        let response = self
            .authorizer
            .is_authorized(request, &self.policies, entities);
        let diagnostics = response.diagnostics();
        if let Some(e) = diagnostics.errors().next() {
            // An evaluation error skips that policy; log it, the decision still stands.
            tracing::warn!(error = %e, "policy evaluation error");
        }
        let mut reasons: Vec<String> = diagnostics
            .reason()
            .map(|id| {
                self.policies
                    .annotation(id, "id")
                    .map_or_else(|| id.to_string(), str::to_owned)
            })
            .collect();
        reasons.sort();
        Decision {
            allowed: response.decision() == cedar_policy::Decision::Allow,
            reasons,
            policy_sha256: self.sha256.clone(),
        }
    }
}
