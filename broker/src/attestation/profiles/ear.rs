//! IETF RATS EAR (brief §1.1). EAR renamed its claims in 2026, so `eat_profile` picks exactly one
//! spelling and a token is never read under the other:
//! - `tag:ietf.org,2026:rats/ear#03` (the WG draft): underscore names (`ear_status`), a top
//!   `ear_status` and a submod `eat_nonce`.
//! - `tag:github.com,2023:veraison/ear` and Trustee's alias
//!   `tag:github.com,2024:confidential-containers/Trustee` (the individual draft, Veraison's and
//!   Trustee's `ear` libraries): dotted names (`ear.status`), neither of those two claims.
//!
//! Any other `eat_profile` is refused. The WG draft's `-04` tag is not accepted: the brief read
//! `#03` only, and a new tag may carry new names.
//!
//! EAR itself carries no TEE kind, measurement or debug flag; the [`EarLayout`] says where the
//! producer puts them. Trustee (submod `cpu0`), by spelling:
//! - underscore: `ear_attester_claims.{tee, claims}` and `ear_verifier_claims.runtime_data`
//!   (Trustee's "draft-04" token shape);
//! - dotted: `ear.veraison.annotated-evidence`, whose one key besides the report/init data names
//!   the TEE and holds its claims, next to `runtime_data_claims` (Trustee before that change).
//!
//! SGX is refused as an unknown TEE: its debug claim in Trustee's tokens is unconfirmed.

use super::read::{self, Object};
use super::{EarLayout, Found, NonceBinding, ProfileRefusal, Tee, TeeFacts};

/// The claim names of one EAR spelling.
struct Names {
    /// Top-level status (optional in the token), if this spelling has one.
    top_status: Option<&'static str>,
    /// The submod's status.
    status: &'static str,
    /// The submod's evidence nonce, if this spelling has one.
    submod_nonce: Option<&'static str>,
    /// Trustee's TEE claims and runtime data are where this spelling puts them.
    trustee: TrusteeShape,
}

/// Where Trustee puts the TEE claims, by spelling.
#[derive(Clone, Copy)]
enum TrusteeShape {
    /// `ear_attester_claims` / `ear_verifier_claims`.
    AttesterClaims,
    /// `ear.veraison.annotated-evidence`.
    AnnotatedEvidence,
}

const DRAFT: Names = Names {
    top_status: Some("ear_status"),
    status: "ear_status",
    submod_nonce: Some("eat_nonce"),
    trustee: TrusteeShape::AttesterClaims,
};

const LEGACY: Names = Names {
    top_status: None,
    status: "ear.status",
    submod_nonce: None,
    trustee: TrusteeShape::AnnotatedEvidence,
};

/// The name table for an `eat_profile` value.
fn names(eat_profile: &str) -> Option<&'static Names> {
    match eat_profile {
        "tag:ietf.org,2026:rats/ear#03" => Some(&DRAFT),
        "tag:github.com,2023:veraison/ear"
        | "tag:github.com,2024:confidential-containers/Trustee" => Some(&LEGACY),
        _ => None,
    }
}

/// The submod holding the primary (CPU) attester's appraisal in Trustee's tokens.
const CPU_SUBMOD: &str = "cpu0";

/// Keys of Trustee's annotated evidence that are report/init data, not the TEE's claims.
const DATA_KEYS: [&str; 4] = [
    "init_data",
    "init_data_claims",
    "report_data",
    "runtime_data_claims",
];

/// Maps an EAR under `layout`.
pub(super) fn map(layout: EarLayout, payload: &Object) -> Result<Found, ProfileRefusal> {
    let names = read::string(payload, "eat_profile", "eat_profile")?
        .and_then(names)
        .ok_or(ProfileRefusal::UnknownEatProfile)?;
    if let Some(top) = names.top_status
        && read::string(payload, top, "ear_status")?.is_some_and(|s| s != "affirming")
    {
        return Err(ProfileRefusal::NotAffirming);
    }
    let submods = read::object(payload, "submods", "submods")?;
    let submod =
        read::object(submods, CPU_SUBMOD, "submods.cpu0")?.ok_or(ProfileRefusal::NotAffirming)?;
    if read::string(submod, names.status, "cpu0 status")? != Some("affirming") {
        return Err(ProfileRefusal::NotAffirming);
    }
    let (tee_name, claims, runtime) = match (layout, names.trustee) {
        (EarLayout::Trustee, TrusteeShape::AttesterClaims) => attester_claims(submod)?,
        (EarLayout::Trustee, TrusteeShape::AnnotatedEvidence) => annotated_evidence(submod)?,
    };
    let tee = trustee_tee(tee_name, claims)?;

    let runtime_nonce = read::string(runtime, "nonce", "runtime_data.nonce")?;
    let submod_nonce = match names.submod_nonce {
        Some(key) => read::string(submod, key, "cpu0 eat_nonce")?,
        None => None,
    };
    let top_nonce = read::string(payload, "eat_nonce", "eat_nonce")?;
    let nonce = runtime_nonce
        .or(submod_nonce)
        .map(|n| (n, NonceBinding::Evidence))
        .or(top_nonce.map(|n| (n, NonceBinding::Result)))
        .map(|(n, binding)| (n.to_owned(), binding));

    let recipient = read::recipient(runtime, "tee-pubkey", "runtime_data.tee-pubkey")?;
    Ok(Found {
        tee,
        nonce,
        recipient,
    })
}

/// The TEE name, its claims and the runtime data: the -03 spelling's `ear_attester_claims`.
fn attester_claims(
    submod: &Object,
) -> Result<(&str, Option<&Object>, Option<&Object>), ProfileRefusal> {
    let attester = read::object(submod, "ear_attester_claims", "ear_attester_claims")?
        .ok_or(ProfileRefusal::MissingTee)?;
    let tee = read::string(attester, "tee", "ear_attester_claims.tee")?
        .ok_or(ProfileRefusal::MissingTee)?;
    let claims = read::object(attester, "claims", "ear_attester_claims.claims")?;
    let verifier = read::object(submod, "ear_verifier_claims", "ear_verifier_claims")?;
    let runtime = read::object(verifier, "runtime_data", "ear_verifier_claims.runtime_data")?;
    Ok((tee, claims, runtime))
}

/// The TEE name, its claims and the runtime data: older Trustee's annotated evidence.
fn annotated_evidence(
    submod: &Object,
) -> Result<(&str, Option<&Object>, Option<&Object>), ProfileRefusal> {
    let evidence = read::object(
        submod,
        "ear.veraison.annotated-evidence",
        "ear.veraison.annotated-evidence",
    )?
    .ok_or(ProfileRefusal::MissingTee)?;
    let mut tees = evidence.keys().filter(|k| !DATA_KEYS.contains(&k.as_str()));
    let tee = tees.next().ok_or(ProfileRefusal::MissingTee)?;
    if tees.next().is_some() {
        // Two TEE claim sets in one appraisal: not a shape Trustee makes.
        return Err(ProfileRefusal::UnknownTee);
    }
    let claims = read::object(evidence, tee, "annotated-evidence tee claims")?;
    let runtime = read::object(evidence, "runtime_data_claims", "runtime_data_claims")?;
    Ok((tee, claims, runtime))
}

/// The facts in Trustee's TEE claims, by TEE name.
fn trustee_tee(tee: &str, claims: Option<&Object>) -> Result<TeeFacts, ProfileRefusal> {
    match tee {
        "snp" | "az-snp-vtpm" => {
            let measurement = read::measurement(claims, "measurement", "measurement")?;
            let debug = read::boolean(claims, "policy_debug_allowed", "policy_debug_allowed")?;
            Ok(TeeFacts {
                tee: Tee::SevSnp,
                measurement,
                debug: read::any_debug(&[debug])?,
                tcb_status: String::new(),
            })
        }
        "tdx" | "az-tdx-vtpm" => {
            let quote = read::object(claims, "quote", "quote")?;
            let body = read::object(quote, "body", "quote.body")?;
            let measurement = read::measurement(body, "mr_td", "quote.body.mr_td")?;
            let attributes = read::object(claims, "td_attributes", "td_attributes")?;
            let debug = read::boolean(attributes, "debug", "td_attributes.debug")?;
            let tcb = read::string(claims, "tcb_status", "tcb_status")?.unwrap_or_default();
            Ok(TeeFacts {
                tee: Tee::Tdx,
                measurement,
                debug: read::any_debug(&[debug])?,
                tcb_status: tcb.to_owned(),
            })
        }
        _ => Err(ProfileRefusal::UnknownTee),
    }
}
