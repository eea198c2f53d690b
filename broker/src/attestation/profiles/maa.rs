//! Microsoft Azure Attestation (brief §1.3). Three token shapes, by top `x-ms-attestation-type`:
//! - `sevsnpvm` (AttestSevSnpVm): `x-ms-sevsnpvm-*` claims at the top level;
//! - `tdxvm` (AttestTdxVm): `tdx_*`, `attester_tcb_status`, `dbgstat` at the top level;
//! - `azurevm` (CVM guest attestation through the vTPM): the same SNP or TDX claims under
//!   `x-ms-isolation-tee`, plus the VM's own debug switches at the top. The TDX names inside
//!   `x-ms-isolation-tee` are unconfirmed; if they differ, such tokens are refused, not mis-read.
//!
//! Nonce: for `sevsnpvm`/`tdxvm`, `x-ms-runtime.nonce` (MAA checks the report data hashes
//! `x-ms-runtime`: evidence binding); for `azurevm`, `x-ms-runtime.client-payload.nonce` (its
//! binding to the vTPM quote is unconfirmed: result binding); else the top `nonce` MAA echoes
//! from the request (result binding).
//!
//! Recipient: the JWK with `kid` [`RECIPIENT_KID`] in `x-ms-runtime.keys`, else
//! `x-ms-runtime.tee-pubkey`. MAA's own vTPM keys (`HCLAkPub`, `TpmEphemeralEncryptionKey`…) are
//! RSA and never picked by kid; a workload key that is RSA is [`super::BoundKey::Unsupported`].

use super::read::{self, Object};
use super::{BoundKey, Found, NonceBinding, ProfileRefusal, Tee, TeeFacts};

/// The `kid` of the workload's own HPKE key in `x-ms-runtime.keys`.
const RECIPIENT_KID: &str = "keybroker-hpke";

/// The claim that names the shape (top level) or the isolation TEE (in `x-ms-isolation-tee`).
const TYPE: &str = "x-ms-attestation-type";

/// Maps an MAA token of any of the three shapes.
pub(super) fn map(payload: &Object) -> Result<Found, ProfileRefusal> {
    let runtime = read::object(payload, "x-ms-runtime", "x-ms-runtime")?;
    let runtime_nonce =
        read::string(runtime, "nonce", "x-ms-runtime.nonce")?.map(|n| (n, NonceBinding::Evidence));
    let (tee, nonce) = match read::string(payload, TYPE, TYPE)? {
        Some("sevsnpvm") => (snp(payload)?, runtime_nonce),
        Some("tdxvm") => (tdx(payload)?, runtime_nonce),
        Some("azurevm") => {
            let client = read::object(runtime, "client-payload", "x-ms-runtime.client-payload")?;
            let nonce = read::string(client, "nonce", "x-ms-runtime.client-payload.nonce")?;
            (azurevm(payload)?, nonce.map(|n| (n, NonceBinding::Result)))
        }
        Some(_) => return Err(ProfileRefusal::UnknownTee),
        None => return Err(ProfileRefusal::MissingTee),
    };
    let top_nonce = read::string(payload, "nonce", "nonce")?.map(|n| (n, NonceBinding::Result));
    let nonce = nonce.or(top_nonce).map(|(n, b)| (n.to_owned(), b));
    Ok(Found {
        tee,
        nonce,
        recipient: recipient(runtime)?,
    })
}

/// SEV-SNP claims (`x-ms-sevsnpvm-*`) in `claims`; MAA gives no TCB verdict for SNP.
fn snp(claims: &Object) -> Result<TeeFacts, ProfileRefusal> {
    let measurement = read::measurement(
        claims,
        "x-ms-sevsnpvm-launchmeasurement",
        "x-ms-sevsnpvm-launchmeasurement",
    )?;
    let debug = read::boolean(
        claims,
        "x-ms-sevsnpvm-is-debuggable",
        "x-ms-sevsnpvm-is-debuggable",
    )?;
    Ok(TeeFacts {
        tee: Tee::SevSnp,
        measurement,
        debug: read::any_debug(&[debug])?,
        tcb_status: String::new(),
    })
}

/// TDX claims (`tdx_*`, `dbgstat`, `attester_tcb_status`) in `claims`.
fn tdx(claims: &Object) -> Result<TeeFacts, ProfileRefusal> {
    let measurement = read::measurement(claims, "tdx_mrtd", "tdx_mrtd")?;
    let attribute = read::boolean(claims, "tdx_td_attributes_debug", "tdx_td_attributes_debug")?;
    let dbgstat = read::string(claims, "dbgstat", "dbgstat")?.map(|s| s != "disabled");
    let tcb_status = read::string(claims, "attester_tcb_status", "attester_tcb_status")?;
    Ok(TeeFacts {
        tee: Tee::Tdx,
        measurement,
        debug: read::any_debug(&[attribute, dbgstat])?,
        tcb_status: tcb_status.unwrap_or_default().to_owned(),
    })
}

/// A CVM guest attestation: the isolation TEE's facts, debug if the TEE or the VM says so.
fn azurevm(payload: &Object) -> Result<TeeFacts, ProfileRefusal> {
    let isolation = read::object(payload, "x-ms-isolation-tee", "x-ms-isolation-tee")?
        .ok_or(ProfileRefusal::MissingTee)?;
    let mut facts = match read::string(isolation, TYPE, "x-ms-isolation-tee.x-ms-attestation-type")?
    {
        Some("sevsnpvm") => snp(isolation)?,
        Some("tdxvm") => tdx(isolation)?,
        Some(_) => return Err(ProfileRefusal::UnknownTee),
        None => return Err(ProfileRefusal::MissingTee),
    };
    let flag = |key: &'static str| read::boolean(payload, key, key);
    let vm_debug = [
        flag("x-ms-azurevm-bootdebug-enabled")?,
        flag("x-ms-azurevm-kerneldebug-enabled")?,
        flag("x-ms-azurevm-hypervisordebug-enabled")?,
        flag("x-ms-azurevm-debuggersdisabled")?.map(|disabled| !disabled),
    ];
    facts.debug |= vm_debug.into_iter().flatten().any(|on| on);
    // The verdict is the TEE's; the brief gives none for the vTPM shape.
    facts.tcb_status.clear();
    Ok(facts)
}

/// The workload's key: `x-ms-runtime.keys[kid = keybroker-hpke]`, else `x-ms-runtime.tee-pubkey`.
fn recipient(runtime: Option<&Object>) -> Result<Option<BoundKey>, ProfileRefusal> {
    const KEYS: &str = "x-ms-runtime.keys";
    let mut chosen = None;
    for key in read::array(runtime, "keys", KEYS)?.into_iter().flatten() {
        let jwk = key.as_object().ok_or(ProfileRefusal::ClaimType(KEYS))?;
        if read::string(jwk, "kid", "x-ms-runtime.keys.kid")? == Some(RECIPIENT_KID) {
            if chosen.is_some() {
                // Two keys under our kid: which one the workload holds is ambiguous.
                return Err(ProfileRefusal::ClaimType(KEYS));
            }
            chosen = Some(read::bound_key(key, KEYS)?);
        }
    }
    match chosen {
        Some(key) => Ok(Some(key)),
        None => read::recipient(runtime, "tee-pubkey", "x-ms-runtime.tee-pubkey"),
    }
}
