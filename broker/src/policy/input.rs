//! Turns a verified [`Principal`], an action, a key's facts and the encryption context into a
//! Cedar request and entity set, checked against the schema. Pure.
//!
//! Absent identity facts become `""` (the schema has no optional attributes, so a policy never
//! trips over a missing one); the encryption context becomes a set of `key=value` strings;
//! key labels become tags.

use std::collections::BTreeMap;
use std::str::FromStr as _;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
    Schema,
};

use super::{Action, AuditAction, PolicyError};
use crate::identity::Principal;

/// What policy may know about a key (existing, or about to be created).
#[derive(Debug, Clone, Copy)]
pub struct KeyFacts<'a> {
    /// Key name (`*` for ListKeys).
    pub name: &'a str,
    /// `datakey` or `seal`.
    pub purpose: &'a str,
    /// The key's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// Jurisdiction of the HSM holding (or about to hold) the key.
    pub hsm_jurisdiction: &'a str,
}

pub(super) fn uid(ty: &str, id: &str) -> Result<EntityUid, PolicyError> {
    let ty = EntityTypeName::from_str(ty).map_err(|e| PolicyError::Request(e.to_string()))?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

pub(super) fn s(v: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(v.to_owned())
}

pub(super) fn opt(v: Option<&String>) -> RestrictedExpression {
    s(v.map_or("", String::as_str))
}

/// The `Keybroker::Workload` attributes of `p`.
pub(crate) fn workload_attrs(p: &Principal) -> Vec<(String, RestrictedExpression)> {
    vec![
        ("issuer".into(), s(&p.issuer)),
        ("subject".into(), s(&p.subject)),
        ("namespace".into(), opt(p.namespace.as_ref())),
        ("service_account".into(), opt(p.service_account.as_ref())),
        ("spiffe_id".into(), opt(p.spiffe_id.as_ref())),
        ("cluster".into(), opt(p.cluster.as_ref())),
        ("region".into(), opt(p.region.as_ref())),
        ("jurisdiction".into(), opt(p.jurisdiction.as_ref())),
        ("job".into(), opt(p.job_id.as_ref())),
    ]
}

/// `key=value` strings of an encryption context; `=` in a key cannot occur (context keys are
/// `[A-Za-z0-9._:/-]`), so the encoding is unambiguous.
pub(crate) fn context_pairs(context: &BTreeMap<String, String>) -> Vec<String> {
    context.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

pub(super) fn build(
    schema: &Schema,
    principal: &Principal,
    action: Action,
    key: &KeyFacts<'_>,
    context: &BTreeMap<String, String>,
) -> Result<(Request, Entities), PolicyError> {
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
    let entities =
        Entities::from_entities([workload, key_entity], Some(schema)).map_err(|e| req_err(&e))?;
    let ctx = Context::from_pairs([
        (
            "encryption_context".to_owned(),
            RestrictedExpression::new_set(context_pairs(context).iter().map(|p| s(p))),
        ),
        ("job".to_owned(), opt(principal.job_id.as_ref())),
    ])
    .map_err(|e| req_err(&e))?;
    let request = Request::new(p_uid, a_uid, k_uid, ctx, Some(schema)).map_err(|e| req_err(&e))?;
    Ok((request, entities))
}

/// The request and entities of reading the audit log (`Keybroker::AuditLog::"log"`).
pub(super) fn build_audit(
    schema: &Schema,
    principal: &Principal,
    action: AuditAction,
) -> Result<(Request, Entities), PolicyError> {
    let req_err = |e: &dyn std::fmt::Display| PolicyError::Request(e.to_string());
    let p_uid = uid("Keybroker::Workload", &principal.subject)?;
    let log_uid = uid("Keybroker::AuditLog", "log")?;
    let a_uid = uid("Keybroker::Action", action.as_str())?;
    let workload = Entity::new_with_tags(p_uid.clone(), workload_attrs(principal), [], [])
        .map_err(|e| req_err(&e))?;
    let log = Entity::new_no_attrs(log_uid.clone(), std::collections::HashSet::new());
    let entities =
        Entities::from_entities([workload, log], Some(schema)).map_err(|e| req_err(&e))?;
    let ctx = Context::from_pairs([
        (
            "encryption_context".to_owned(),
            RestrictedExpression::new_set([]),
        ),
        ("job".to_owned(), opt(principal.job_id.as_ref())),
    ])
    .map_err(|e| req_err(&e))?;
    let request =
        Request::new(p_uid, a_uid, log_uid, ctx, Some(schema)).map_err(|e| req_err(&e))?;
    Ok((request, entities))
}
