//! Offline validation of a Cedar policy against keybroker's schema. The broker runs exactly
//! this check when it loads or reloads a policy, so `keybroker policy check FILE` in a CI
//! pipeline predicts whether the broker will take the file.
//!
//! Rules on top of Cedar's strict schema validation: every policy has an `@id("…")` (the ids
//! are the reasons reported for a decision and written to the audit log), and no id is used
//! twice.

use std::collections::BTreeSet;

use cedar_policy::{PolicySet, Schema, ValidationMode, Validator};
use sha2::{Digest as _, Sha256};

/// The schema every keybroker policy is validated against (`formats/policy/`): its actions are
/// those of [`crate::ops`].
pub const SCHEMA: &str = include_str!("../policy/schema.cedarschema");

/// Why a policy was refused. Messages name the origin (file) and every problem found.
#[derive(Debug, thiserror::Error)]
pub enum PolicyCheckError {
    /// The built-in schema does not parse (a build defect, caught by tests).
    #[error("policy schema: {0}")]
    Schema(#[source] Box<cedar_policy::CedarSchemaError>),
    /// The policy text is not Cedar.
    #[error("policy {origin}: {source}")]
    Parse {
        /// File name or `built-in`.
        origin: String,
        /// Cedar's parse errors.
        #[source]
        source: Box<cedar_policy::ParseErrors>,
    },
    /// The policy does not validate against the schema, or breaks the `@id` rules.
    #[error("policy {origin}: {problem}")]
    Invalid {
        /// File name or `built-in`.
        origin: String,
        /// Every problem found, `;`-separated.
        problem: String,
    },
}

/// A policy that passed every check.
pub struct CheckedPolicy {
    /// The parsed schema it was validated against.
    pub schema: Schema,
    /// The policies.
    pub policies: PolicySet,
    /// The `@id`s, sorted.
    pub ids: Vec<String>,
    /// sha256 (hex) of the policy text, as audit records name it.
    pub sha256: String,
}

impl std::fmt::Debug for CheckedPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedPolicy")
            .field("ids", &self.ids)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Parses `text` (named `origin` in messages) and validates it against [`SCHEMA`].
///
/// # Errors
/// [`PolicyCheckError::Parse`] for syntax, [`PolicyCheckError::Invalid`] for schema violations
/// (a misspelt attribute, a wrong type, an unknown action) and missing or duplicate `@id`s.
pub fn check(text: &str, origin: &str) -> Result<CheckedPolicy, PolicyCheckError> {
    let (schema, _warnings) =
        Schema::from_cedarschema_str(SCHEMA).map_err(|e| PolicyCheckError::Schema(Box::new(e)))?;
    let policies: PolicySet = text.parse().map_err(|source| PolicyCheckError::Parse {
        origin: origin.to_owned(),
        source: Box::new(source),
    })?;
    let invalid = |problem: String| PolicyCheckError::Invalid {
        origin: origin.to_owned(),
        problem,
    };
    let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
    if !result.validation_passed() {
        let problems: Vec<String> = result
            .validation_errors()
            .map(ToString::to_string)
            .collect();
        return Err(invalid(problems.join("; ")));
    }
    let mut ids = BTreeSet::new();
    for p in policies.policies() {
        let id = p
            .annotation("id")
            .ok_or_else(|| invalid(format!("policy {} has no @id(\"...\")", p.id())))?;
        if !ids.insert(id.to_owned()) {
            return Err(invalid(format!("@id({id:?}) is used twice")));
        }
    }
    Ok(CheckedPolicy {
        schema,
        policies,
        ids: ids.into_iter().collect(),
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_parses_and_a_valid_policy_reports_ids_and_hash() {
        let p = check(
            "@id(\"b\")\npermit (principal, action, resource);\n@id(\"a\")\nforbid (principal, action, resource) when { principal.namespace == \"x\" };",
            "t",
        )
        .unwrap();
        assert_eq!(p.ids, ["a", "b"]);
        assert_eq!(p.sha256.len(), 64);
    }

    #[test]
    fn typos_missing_and_duplicate_ids_are_refused_with_the_problem_named() {
        let cases = [
            ("permit (principal, action, resource", "t"),
            (
                "@id(\"x\")\npermit (principal, action, resource) when { principal.namespce == \"dev\" };",
                "namespce",
            ),
            ("permit (principal, action, resource);", "no @id"),
            (
                "@id(\"x\")\npermit (principal, action, resource);\n@id(\"x\")\nforbid (principal, action, resource);",
                "used twice",
            ),
            (
                "@id(\"x\")\npermit (principal, action == Keybroker::Action::\"Explode\", resource);",
                "Explode",
            ),
        ];
        for (text, needle) in cases {
            let e = check(text, "t").unwrap_err().to_string();
            assert!(e.starts_with("policy t: "), "{e}");
            assert!(e.contains(needle), "{needle}: {e}");
        }
    }
}
