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

/// What AWS KMS said about an XKS call (`context.xks`); absent values are `""`.
#[derive(Debug, Clone, Copy, Default)]
pub struct XksRequestFacts<'a> {
    /// The key store's URI prefix.
    pub key_store: &'a str,
    /// `kmsOperation`.
    pub kms_operation: &'a str,
    /// `awsPrincipalArn`.
    pub aws_principal_arn: &'a str,
    /// `kmsKeyArn`.
    pub kms_key_arn: &'a str,
    /// `kmsViaService`.
    pub kms_via_service: &'a str,
    /// `awsSourceVpc`.
    pub aws_source_vpc: &'a str,
    /// `awsSourceVpce`.
    pub aws_source_vpce: &'a str,
}

/// What a verified attestation result says (`context.attestation`), and whether the key
/// leaves sealed to the TEE (`context.recipient_release`).
#[derive(Debug, Clone, Copy)]
pub struct AttestationFacts<'a> {
    /// `sev-snp`, `tdx`, …
    pub tee: &'a str,
    /// Lower-case hex.
    pub measurement: &'a str,
    /// Any debug indicator set.
    pub debug: bool,
    /// The verifier's TCB verdict, `""` when none.
    pub tcb_status: &'a str,
    /// The configured verifier's name.
    pub verifier: &'a str,
    /// Seconds since the result was issued.
    pub age_seconds: u64,
    /// `evidence` or `result`.
    pub nonce_binding: &'a str,
}

fn attestation_record(a: &AttestationFacts<'_>) -> Result<RestrictedExpression, PolicyError> {
    RestrictedExpression::new_record([
        ("tee".to_owned(), s(a.tee)),
        ("measurement".to_owned(), s(a.measurement)),
        ("debug".to_owned(), RestrictedExpression::new_bool(a.debug)),
        ("tcb_status".to_owned(), s(a.tcb_status)),
        ("verifier".to_owned(), s(a.verifier)),
        (
            "age_seconds".to_owned(),
            RestrictedExpression::new_long(i64::try_from(a.age_seconds).unwrap_or(i64::MAX)),
        ),
        ("nonce_binding".to_owned(), s(a.nonce_binding)),
    ])
    .map_err(|e| PolicyError::Request(e.to_string()))
}

/// The account id of an ARN (`arn:partition:service:region:account:resource`); `""` for
/// anything else (a service principal, "AWS Internal").
fn arn_account(arn: &str) -> &str {
    let mut parts = arn.splitn(6, ':');
    match (parts.next(), parts.nth(3)) {
        (Some("arn"), Some(account))
            if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) =>
        {
            account
        }
        _ => "",
    }
}

fn xks_record(x: &XksRequestFacts<'_>) -> Result<RestrictedExpression, PolicyError> {
    RestrictedExpression::new_record([
        ("key_store".to_owned(), s(x.key_store)),
        ("kms_operation".to_owned(), s(x.kms_operation)),
        ("aws_principal_arn".to_owned(), s(x.aws_principal_arn)),
        (
            "aws_account".to_owned(),
            s(arn_account(x.aws_principal_arn)),
        ),
        ("kms_key_arn".to_owned(), s(x.kms_key_arn)),
        ("kms_key_account".to_owned(), s(arn_account(x.kms_key_arn))),
        ("kms_via_service".to_owned(), s(x.kms_via_service)),
        ("aws_source_vpc".to_owned(), s(x.aws_source_vpc)),
        ("aws_source_vpce".to_owned(), s(x.aws_source_vpce)),
    ])
    .map_err(|e| PolicyError::Request(e.to_string()))
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
    xks: Option<&XksRequestFacts<'_>>,
    attested: Option<(&AttestationFacts<'_>, bool)>,
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
    let mut pairs = vec![
        (
            "encryption_context".to_owned(),
            RestrictedExpression::new_set(context_pairs(context).iter().map(|p| s(p))),
        ),
        ("job".to_owned(), opt(principal.job_id.as_ref())),
    ];
    if let Some(x) = xks {
        pairs.push(("xks".to_owned(), xks_record(x)?));
    }
    let mut recipient_release = false;
    if let Some((a, recipient)) = attested {
        pairs.push(("attestation".to_owned(), attestation_record(a)?));
        recipient_release = recipient;
    }
    pairs.push((
        "recipient_release".to_owned(),
        RestrictedExpression::new_bool(recipient_release),
    ));
    let ctx = Context::from_pairs(pairs).map_err(|e| req_err(&e))?;
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
        (
            "recipient_release".to_owned(),
            RestrictedExpression::new_bool(false),
        ),
    ])
    .map_err(|e| req_err(&e))?;
    let request =
        Request::new(p_uid, a_uid, log_uid, ctx, Some(schema)).map_err(|e| req_err(&e))?;
    Ok((request, entities))
}
