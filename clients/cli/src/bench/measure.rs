//! What every bench module shares, on the bench's ground floor: the operation kinds, the
//! payload of an encrypt, and what a run measured (HDR histograms per kind). The targets, the
//! load loop and the report all import this room and it imports none of them.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency the histograms hold, in microseconds (larger values saturate).
const MAX_LATENCY_US: u64 = 120_000_000;

/// Payload of an encrypt: the size of a data key.
pub(crate) const PAYLOAD: [u8; 32] = [0x5a; 32];

/// One kind of operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OpKind {
    /// GenerateDataKey (plaintext + wrapped copy + lease).
    Datakey,
    /// Decrypt of a data-key ciphertext.
    Decrypt,
    /// Encrypt of a 32-byte payload.
    Encrypt,
    /// Sign of a SHA-256 digest with a SIGN key (ECDSA P-256 in the raw-hsm target).
    Sign,
    /// Attested release: GetAttestationNonce, a dev attestation result minted for it, then
    /// GenerateDataKey with that result and HPKE recipient release, and opening the sealed key.
    Attested,
    /// GetAttestationNonce alone (the extra round trip of an attested release).
    Nonce,
}

impl OpKind {
    /// The name used on the command line and in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Datakey => "datakey",
            Self::Decrypt => "decrypt",
            Self::Encrypt => "encrypt",
            Self::Sign => "sign",
            Self::Attested => "attested",
            Self::Nonce => "nonce",
        }
    }

    /// Parses a name as printed by [`OpKind::name`].
    pub(crate) fn from_name(s: &str) -> Option<Self> {
        [
            Self::Datakey,
            Self::Decrypt,
            Self::Encrypt,
            Self::Sign,
            Self::Attested,
            Self::Nonce,
        ]
        .into_iter()
        .find(|op| op.name() == s)
    }
}

/// What a run measured.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// Latency of successful operations per operation kind, microseconds.
    pub(crate) latency: BTreeMap<OpKind, Histogram<u64>>,
    /// Failed operations per error code.
    pub(crate) errors: BTreeMap<String, u64>,
    /// From the first ticket to the last completion.
    pub(crate) elapsed: Duration,
}

/// An empty latency histogram: 1 µs to 120 s, 3 significant digits.
///
/// # Errors
/// Never in practice (the bounds are constants hdrhistogram accepts).
pub(crate) fn histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
}
