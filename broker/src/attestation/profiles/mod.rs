//! Claim profiles: each attestation service's result (a verified JWT payload) mapped to the one
//! set of facts policy and audit see. Pure: no clock, no I/O, no signature work (the payload
//! arrives verified); freshness (nonce, age) is checked by the caller with what this returns.
//!
//! Profiles (docs/attestation.md has the claim tables, docs/design/attestation-brief.md §1 the
//! sources):
//! - [`Profile::Ear`]: IETF RATS EAR (Veraison, Trustee); the name table is chosen by
//!   `eat_profile`, the TEE claims by the configured [`EarLayout`].
//! - [`Profile::IntelTrustAuthority`]: Intel Trust Authority TDX tokens (v2 `tdx` nesting, v1
//!   top level).
//! - [`Profile::AzureAttestation`]: Microsoft Azure Attestation SEV-SNP VM, TDX VM and CVM
//!   guest (`azurevm`) tokens.

use serde_json::{Map, Value};

mod ear;
mod ita;
mod maa;
mod read;
#[cfg(test)]
mod tests;

/// A trusted execution environment kind. A closed list: anything else is refused. SGX and
/// NVIDIA confidential GPUs (`sgx`, `nvidia-cc` in policy) come when a profile can map their
/// claims from a confirmed source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tee {
    /// AMD SEV-SNP.
    SevSnp,
    /// Intel TDX.
    Tdx,
}

impl Tee {
    /// The name policy sees (`context.attestation.tee`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::SevSnp => "sev-snp",
            Self::Tdx => "tdx",
        }
    }
}

/// How the nonce the result carries is tied to the TEE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceBinding {
    /// In the hardware-bound runtime/report data: the evidence was made after the nonce.
    Evidence,
    /// Only echoed by the verifier: the result was made after the nonce.
    Result,
}

impl NonceBinding {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Evidence => "evidence",
            Self::Result => "result",
        }
    }
}

/// A public key the result binds to the TEE (the recipient of a sealed data key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BoundKey {
    /// An X25519 key (JWK `kty: OKP, crv: X25519`), raw 32 bytes.
    X25519([u8; 32]),
    /// A key of another type (RSA, EC, Ed25519…): cannot be an HPKE recipient here. Holds a
    /// short description (`"RSA"`, `"EC P-256"`), never key bytes.
    Unsupported(String),
}

/// What a profile found in a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapped {
    pub(crate) tee: Tee,
    /// Lower-case hex, 64–192 digits.
    pub(crate) measurement: String,
    /// True if any debug indicator of the profile says so.
    pub(crate) debug: bool,
    /// The verifier's TCB verdict verbatim, `""` when the profile has none.
    pub(crate) tcb_status: String,
    /// `iat` (required, integer).
    pub(crate) iat: u64,
    /// `exp`, when present.
    pub(crate) exp: Option<u64>,
    /// Our nonce as the result carries it, and how it is bound.
    pub(crate) nonce: Option<(String, NonceBinding)>,
    /// The TEE-bound public key (`tee-pubkey` in runtime data), when present.
    pub(crate) recipient: Option<BoundKey>,
}

/// Where an EAR producer puts the TEE claims (EAR itself standardises none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EarLayout {
    /// Confidential Containers Trustee: submod `cpu0`, `ear_attester_claims`,
    /// `ear_verifier_claims.runtime_data`.
    Trustee,
}

/// A configured claim profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    Ear(EarLayout),
    IntelTrustAuthority,
    AzureAttestation,
}

/// Why a result's claims were refused. `as_str` is the audited reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProfileRefusal {
    /// No TEE kind where the profile looks.
    MissingTee,
    /// A TEE kind outside the closed list.
    UnknownTee,
    /// No measurement, or not 64–192 hex digits.
    BadMeasurement,
    /// No integer `iat`.
    MissingIat,
    /// No debug indicator where the profile looks (absence is not proof of a non-debug TEE).
    MissingDebug,
    /// EAR: an `eat_profile` this build does not know.
    UnknownEatProfile,
    /// EAR: a status other than `affirming`.
    NotAffirming,
    /// A claim we read has the wrong JSON type (the claim's name).
    ClaimType(&'static str),
}

impl ProfileRefusal {
    pub(crate) fn as_str(self) -> String {
        match self {
            Self::MissingTee => "missing tee".to_owned(),
            Self::UnknownTee => "unknown tee".to_owned(),
            Self::BadMeasurement => "missing or malformed measurement".to_owned(),
            Self::MissingIat => "missing or malformed iat".to_owned(),
            Self::MissingDebug => "missing debug flag".to_owned(),
            Self::UnknownEatProfile => "unknown eat_profile".to_owned(),
            Self::NotAffirming => "status not affirming".to_owned(),
            Self::ClaimType(name) => format!("claim {name} has the wrong type"),
        }
    }
}

/// Maps a verified payload under `profile`.
///
/// # Errors
/// The first [`ProfileRefusal`] found.
pub(crate) fn map(
    profile: Profile,
    payload: &Map<String, Value>,
) -> Result<Mapped, ProfileRefusal> {
    let (iat, exp) = read::times(payload)?;
    let found = match profile {
        Profile::Ear(layout) => ear::map(layout, payload)?,
        Profile::IntelTrustAuthority => ita::map(payload)?,
        Profile::AzureAttestation => maa::map(payload)?,
    };
    let TeeFacts {
        tee,
        measurement,
        debug,
        tcb_status,
    } = found.tee;
    Ok(Mapped {
        tee,
        measurement,
        debug,
        tcb_status,
        iat,
        exp,
        nonce: found.nonce,
        recipient: found.recipient,
    })
}

/// What one profile's mapper found: [`Mapped`] without the times, which every profile reads the
/// same way.
struct Found {
    tee: TeeFacts,
    nonce: Option<(String, NonceBinding)>,
    recipient: Option<BoundKey>,
}

/// The facts about the TEE itself (see [`Mapped`]).
struct TeeFacts {
    tee: Tee,
    measurement: String,
    debug: bool,
    tcb_status: String,
}
