//! Intel Trust Authority TDX tokens (brief §1.2). v2 tokens nest the TEE claims under `tdx`; v1
//! tokens have them at the top level. `attester_type` must be `TDX`: ITA's SGX claim names are
//! unconfirmed, so an SGX token is refused as an unknown TEE.
//!
//! ITA hashes the attester's user data into the TDX report data and echoes it twice: parsed as
//! `attester_runtime_data` and raw (base64) as `attester_held_data`. Our nonce and `tee-pubkey`
//! come from the parsed form, or, when ITA sent none, from the raw form if it is a JSON object;
//! both are bound to the evidence.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::read::{self, Object};
use super::{Found, NonceBinding, ProfileRefusal, Tee, TeeFacts};
use crate::identity::strict_json::{self, StrictError};

/// Maps an ITA token (v2, else v1).
pub(super) fn map(payload: &Object) -> Result<Found, ProfileRefusal> {
    let claims = read::object(payload, "tdx", "tdx")?.unwrap_or(payload);
    match read::string(claims, "attester_type", "attester_type")? {
        Some("TDX") => {}
        Some(_) => return Err(ProfileRefusal::UnknownTee),
        None => return Err(ProfileRefusal::MissingTee),
    }
    let measurement = read::measurement(claims, "tdx_mrtd", "tdx_mrtd")?;
    let debug = read::any_debug(&[
        read::boolean(claims, "tdx_is_debuggable", "tdx_is_debuggable")?,
        read::boolean(claims, "tdx_td_attributes_debug", "tdx_td_attributes_debug")?,
    ])?;
    let tcb_status = read::string(claims, "attester_tcb_status", "attester_tcb_status")?;

    let held;
    let runtime = match read::object(claims, "attester_runtime_data", "attester_runtime_data")? {
        Some(runtime) => Some(runtime),
        None => {
            held = held_data(claims)?;
            held.as_ref()
        }
    };
    let nonce = read::string(runtime, "nonce", "attester_runtime_data.nonce")?
        .map(|n| (n.to_owned(), NonceBinding::Evidence));
    let recipient = read::recipient(runtime, "tee-pubkey", "attester_runtime_data.tee-pubkey")?;
    let tee = TeeFacts {
        tee: Tee::Tdx,
        measurement,
        debug,
        tcb_status: tcb_status.unwrap_or_default().to_owned(),
    };
    Ok(Found {
        tee,
        nonce,
        recipient,
    })
}

/// `attester_held_data` decoded, when it is base64 of a JSON object. User data may be any bytes,
/// so anything else means "no runtime data", not a refusal; a duplicate key, though, is refused
/// as in every other JSON we read.
fn held_data(claims: &Object) -> Result<Option<Object>, ProfileRefusal> {
    let Some(held) = read::string(claims, "attester_held_data", "attester_held_data")? else {
        return Ok(None);
    };
    let Ok(bytes) = STANDARD.decode(held) else {
        return Ok(None);
    };
    match strict_json::parse_object(&bytes) {
        Ok(object) => Ok(Some(object)),
        Err(StrictError::NotObject) => Ok(None),
        Err(StrictError::DuplicateKey) => Err(ProfileRefusal::ClaimType("attester_held_data")),
    }
}
