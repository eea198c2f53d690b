//! Policy for the Signing service: actions `Sign` and `SignAttestation` on a key, with what is
//! being signed (artifact, digests, in-toto subjects, predicate type) in a `SigningContext`.
//! Not memoized: every signature names a new digest, so no two requests ask the same question.

use cedar_policy::{Context, Entities, Entity, RestrictedExpression};

use super::input::{opt, s, uid, workload_attrs};
use super::{Decision, KeyFacts, PolicyEngine, PolicyError, SignAction};
use crate::identity::Principal;

/// What is being signed, as policy sees it.
#[derive(Debug, Clone, Default)]
pub struct SigningFacts {
    /// Artifact name (`Sign`), or empty.
    pub artifact_name: String,
    /// Media type, or empty.
    pub media_type: String,
    /// `alg:hex` of the digest signed.
    pub digests: Vec<String>,
    /// Subject names.
    pub subject_names: Vec<String>,
    /// `alg:hex` of every subject digest.
    pub subject_digests: Vec<String>,
    /// The statement's predicate type (`SignAttestation`), or empty.
    pub predicate_type: String,
}

fn set(items: &[String]) -> RestrictedExpression {
    RestrictedExpression::new_set(items.iter().map(|v| s(v)))
}

impl PolicyEngine {
    /// Decides whether `principal` may sign with `key` as `action`.
    ///
    /// # Errors
    /// [`PolicyError::Request`] when the input cannot be expressed in the schema; callers
    /// treat that as a deny.
    pub fn decide_signing(
        &self,
        principal: &Principal,
        action: SignAction,
        key: &KeyFacts<'_>,
        what: &SigningFacts,
    ) -> Result<Decision, PolicyError> {
        let req_err = |e: &dyn std::fmt::Display| PolicyError::Request(e.to_string());
        let p_uid = uid("Keybroker::Workload", &principal.subject)?;
        let k_uid = uid("Keybroker::Key", key.name)?;
        let a_uid = uid("Keybroker::Action", action.as_str())?;
        let workload = Entity::new_with_tags(p_uid.clone(), workload_attrs(principal), [], [])
            .map_err(|e| req_err(&e))?;
        let key_entity = Entity::new_with_tags(
            k_uid.clone(),
            [
                ("name".to_owned(), s(key.name)),
                ("purpose".to_owned(), s(key.purpose)),
                ("hsm_jurisdiction".to_owned(), s(key.hsm_jurisdiction)),
            ],
            [],
            key.labels.iter().map(|(k, v)| (k.clone(), s(v))),
        )
        .map_err(|e| req_err(&e))?;
        let entities = Entities::from_entities([workload, key_entity], Some(&self.schema))
            .map_err(|e| req_err(&e))?;
        let ctx = Context::from_pairs([
            ("job".to_owned(), opt(principal.job_id.as_ref())),
            ("artifact_name".to_owned(), s(&what.artifact_name)),
            ("media_type".to_owned(), s(&what.media_type)),
            ("digests".to_owned(), set(&what.digests)),
            ("subject_names".to_owned(), set(&what.subject_names)),
            ("subject_digests".to_owned(), set(&what.subject_digests)),
            ("predicate_type".to_owned(), s(&what.predicate_type)),
        ])
        .map_err(|e| req_err(&e))?;
        let request = cedar_policy::Request::new(p_uid, a_uid, k_uid, ctx, Some(&self.schema))
            .map_err(|e| req_err(&e))?;
        Ok(self.evaluate(&request, &entities))
    }
}

#[cfg(test)]
#[path = "signing_tests.rs"]
mod tests;
