//! Dev-mode attestation results: mints the token a TEE's attestation verifier would return, the
//! way `keybrokerd dev`'s built-in dev verifier expects, so the attested-release flow runs on a
//! laptop and in CI without a TEE. Nothing here attests anything: whoever can read the dev
//! state dir can mint any result.
//!
//! Layout (a contract with the broker's dev mode, like `dev_token`'s for the issuer):
//! - `DIR/dev-attestation/verifier.json`: `{"issuer", "kid", "profile", "layout"}` (strings;
//!   `profile` must be `ear` and `layout` `trustee` when present; unknown fields are ignored);
//! - `DIR/dev-attestation/signing-key.pem`: the verifier's PKCS#8 Ed25519 private key (PEM).
//!
//! A result is an EdDSA JWT (`typ=JWT`, `kid` from `verifier.json`) holding an IETF RATS EAR
//! (`eat_profile` `tag:ietf.org,2026:rats/ear#03`) in the Trustee layout: submod `cpu0` with
//! `ear_attester_claims` (`tee` `snp` with `claims.measurement`/`claims.policy_debug_allowed`,
//! or `tdx` with `claims.quote.body.mr_td`/`claims.td_attributes.debug`/`claims.tcb_status`)
//! and `ear_verifier_claims.runtime_data` carrying the broker's `nonce` and the recipient key
//! as an X25519 JWK `tee-pubkey`. So the dev flow runs the broker's real EAR mapper.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::release::X25519_KEY_LEN;

/// Directory under the state dir holding the dev attestation verifier.
pub const VERIFIER_DIR: &str = "dev-attestation";
/// Verifier description file inside [`VERIFIER_DIR`].
pub const VERIFIER_FILE: &str = "verifier.json";
/// PKCS#8 Ed25519 private key inside [`VERIFIER_DIR`].
pub const SIGNING_KEY_FILE: &str = "signing-key.pem";
/// The EAR profile of dev results (EAR draft -03 claim names).
pub const EAR_PROFILE: &str = "tag:ietf.org,2026:rats/ear#03";
/// Default lifetime of a dev result.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Longest lifetime a dev result may have.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest `iat` shift, either way.
const MAX_IAT_OFFSET: i64 = 365 * 24 * 3600;

/// The TEE a dev result claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    /// AMD SEV-SNP (Trustee's `snp`).
    SevSnp,
    /// Intel TDX (Trustee's `tdx`).
    Tdx,
}

/// What a dev result says.
#[derive(Debug, Clone)]
pub struct DevResult {
    /// The TEE.
    pub tee: Tee,
    /// Leave the `tee` claim out (to test the broker's refusal of such results).
    pub omit_tee: bool,
    /// The launch measurement (SNP) or MRTD (TDX), 64–192 hex digits.
    pub measurement: String,
    /// The TEE runs in debug mode.
    pub debug: bool,
    /// The broker's nonce (from `keybroker attestation nonce`); `None` leaves it out.
    pub nonce: Option<String>,
    /// The X25519 public key the TEE holds, bound as `tee-pubkey`.
    pub recipient: Option<[u8; X25519_KEY_LEN]>,
    /// Lifetime: `exp = iat + ttl`.
    pub ttl: Duration,
    /// Seconds added to the current time for `iat` (negative: an old result).
    pub iat_offset: i64,
}

/// An error while minting a dev result. Never holds the token or key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevAttestationError {
    /// A file of the dev verifier could not be read.
    #[error("cannot read {} (is this a `keybrokerd dev` state dir with dev attestation?): {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `verifier.json` is not what the contract says.
    #[error("invalid dev verifier file {}: {problem}", path.display())]
    VerifierFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The signing key is not a PKCS#8 Ed25519 private key in PEM.
    #[error("invalid dev attestation signing key {} (want a PKCS#8 Ed25519 PEM): {source}", path.display())]
    SigningKey {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// Signing failed.
    #[error("cannot sign dev attestation result: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The result itself is invalid (measurement, nonce, lifetime, offset).
    #[error("{0}")]
    Invalid(&'static str),
}

/// `verifier.json`.
#[derive(Debug, Deserialize)]
struct VerifierInfo {
    issuer: String,
    kid: String,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    layout: Option<String>,
}

/// Checks a measurement (64–192 hex digits) and returns it in lower case.
///
/// # Errors
/// `Invalid` for anything else.
pub fn measurement(hex: &str) -> Result<String, DevAttestationError> {
    if !(64..=192).contains(&hex.len()) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DevAttestationError::Invalid(
            "measurement must be 64 to 192 hex digits",
        ));
    }
    Ok(hex.to_ascii_lowercase())
}

/// The claims of a result from the verifier `issuer`, issued at `now + r.iat_offset`.
fn claims(issuer: &str, r: &DevResult, now: i64) -> Result<Value, DevAttestationError> {
    let m = measurement(&r.measurement)?;
    if r.ttl.is_zero() || r.ttl > MAX_TTL {
        return Err(DevAttestationError::Invalid(
            "result lifetime must be between 1 second and 24 hours",
        ));
    }
    if !(-MAX_IAT_OFFSET..=MAX_IAT_OFFSET).contains(&r.iat_offset) {
        return Err(DevAttestationError::Invalid(
            "iat offset must be within a year",
        ));
    }
    if r.nonce.as_deref().is_some_and(str::is_empty) {
        return Err(DevAttestationError::Invalid("nonce is empty"));
    }
    let iat = now.saturating_add(r.iat_offset);
    let ttl = i64::try_from(r.ttl.as_secs()).unwrap_or(i64::MAX);
    let (tee, mut attester) = match r.tee {
        Tee::SevSnp => (
            "snp",
            json!({"claims": {"measurement": m, "policy_debug_allowed": r.debug}}),
        ),
        Tee::Tdx => (
            "tdx",
            json!({"claims": {"quote": {"body": {"mr_td": m}},
                              "td_attributes": {"debug": r.debug}, "tcb_status": "UpToDate"}}),
        ),
    };
    if !r.omit_tee {
        attester["tee"] = json!(tee);
    }
    let mut runtime = serde_json::Map::new();
    if let Some(nonce) = &r.nonce {
        runtime.insert("nonce".into(), json!(nonce));
    }
    if let Some(pk) = &r.recipient {
        runtime.insert(
            "tee-pubkey".into(),
            json!({"kty": "OKP", "crv": "X25519", "x": URL_SAFE_NO_PAD.encode(pk)}),
        );
    }
    Ok(json!({
        "iss": issuer,
        "eat_profile": EAR_PROFILE,
        "iat": iat,
        "exp": iat.saturating_add(ttl),
        "ear_verifier_id": {"developer": "https://keybroker.invalid/dev-attestation", "build": "keybroker"},
        "ear_status": "affirming",
        "submods": {"cpu0": {
            "ear_status": "affirming",
            "ear_trustworthiness_vector": {
                "instance-identity": 2, "configuration": 2, "executables": 2, "hardware": 2,
            },
            "ear_appraisal_policy_ids": ["keybroker-dev"],
            "ear_attester_claims": attester,
            "ear_verifier_claims": {"runtime_data": runtime},
        }},
    }))
}

/// Mints a dev attestation result signed by the dev verifier in `state_dir`.
///
/// # Errors
/// `Read` when `verifier.json` or the signing key is missing, `VerifierFile` when
/// `verifier.json` lacks a field or names another profile or layout, `SigningKey` when the key
/// is not PKCS#8 Ed25519, `Invalid` for a bad measurement, nonce, lifetime or offset, `Sign`
/// when signing fails.
pub fn mint(
    state_dir: &Path,
    result: &DevResult,
) -> Result<Zeroizing<String>, DevAttestationError> {
    let dir = state_dir.join(VERIFIER_DIR);
    let info_path = dir.join(VERIFIER_FILE);
    let info: VerifierInfo = serde_json::from_slice(&read(&info_path)?).map_err(|e| {
        DevAttestationError::VerifierFile {
            path: info_path.clone(),
            problem: e.to_string(),
        }
    })?;
    for (field, got, want) in [
        ("profile", &info.profile, "ear"),
        ("layout", &info.layout, "trustee"),
    ] {
        if got.as_deref().is_some_and(|g| g != want) {
            return Err(DevAttestationError::VerifierFile {
                path: info_path,
                problem: format!("{field} must be {want:?}, this client mints no other"),
            });
        }
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let payload = claims(&info.issuer, result, now)?;
    let key_path = dir.join(SIGNING_KEY_FILE);
    let key = EncodingKey::from_ed_pem(&read(&key_path)?).map_err(|source| {
        DevAttestationError::SigningKey {
            path: key_path,
            source,
        }
    })?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(info.kid);
    let token = jsonwebtoken::encode(&header, &payload, &key).map_err(DevAttestationError::Sign)?;
    Ok(Zeroizing::new(token))
}

/// Reads a dev-verifier file into a zeroizing buffer (it may be the private key).
fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, DevAttestationError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| DevAttestationError::Read {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    const M: &str = "ABababababababababababababababababababababababababababababababababababababababababababababababab";

    fn result(tee: Tee) -> DevResult {
        DevResult {
            tee,
            omit_tee: false,
            measurement: M.into(),
            debug: false,
            nonce: Some("N".into()),
            recipient: Some([1; 32]),
            ttl: DEFAULT_TTL,
            iat_offset: 0,
        }
    }

    /// Writes a dev verifier into `dir` and returns the public key PEM.
    fn make_verifier(dir: &Path, info: &Value) -> anyhow::Result<String> {
        let d = dir.join(VERIFIER_DIR);
        std::fs::create_dir_all(&d)?;
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        std::fs::write(d.join(SIGNING_KEY_FILE), kp.serialize_pem())?;
        std::fs::write(d.join(VERIFIER_FILE), serde_json::to_vec(info)?)?;
        Ok(kp.public_key_pem())
    }

    #[test]
    fn sev_snp_claims_are_the_contract() -> anyhow::Result<()> {
        let got = claims(
            "https://dev-attestation.keybroker.invalid",
            &result(Tee::SevSnp),
            1000,
        )?;
        let m = M.to_ascii_lowercase();
        let want = json!({"iss":"https://dev-attestation.keybroker.invalid",
            "eat_profile":"tag:ietf.org,2026:rats/ear#03","iat":1000,"exp":1300,
            "ear_verifier_id":{"developer":"https://keybroker.invalid/dev-attestation","build":"keybroker"},
            "ear_status":"affirming",
            "submods":{"cpu0":{"ear_status":"affirming",
                "ear_trustworthiness_vector":{"instance-identity":2,"configuration":2,"executables":2,"hardware":2},
                "ear_appraisal_policy_ids":["keybroker-dev"],
                "ear_attester_claims":{"tee":"snp","claims":{"measurement":m,"policy_debug_allowed":false}},
                "ear_verifier_claims":{"runtime_data":{"nonce":"N",
                    "tee-pubkey":{"kty":"OKP","crv":"X25519","x":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"}}}}}});
        assert_eq!(got, want);
        Ok(())
    }

    #[test]
    fn tdx_no_tee_no_nonce_and_offsets() -> anyhow::Result<()> {
        let r = DevResult {
            omit_tee: true,
            debug: true,
            nonce: None,
            recipient: None,
            iat_offset: -600,
            ttl: Duration::from_secs(60),
            ..result(Tee::Tdx)
        };
        let got = claims("i", &r, 1000)?;
        assert_eq!(
            (got["iat"].as_i64(), got["exp"].as_i64()),
            (Some(400), Some(460))
        );
        let cpu0 = &got["submods"]["cpu0"];
        assert_eq!(
            cpu0["ear_attester_claims"],
            json!({"claims":{"quote":{"body":{"mr_td":M.to_ascii_lowercase()}},
                             "td_attributes":{"debug":true},"tcb_status":"UpToDate"}})
        );
        assert_eq!(cpu0["ear_verifier_claims"], json!({"runtime_data":{}}));
        Ok(())
    }

    #[test]
    fn bad_measurements_nonces_and_lifetimes_are_refused() {
        for m in [
            "",
            &"a".repeat(63),
            &"a".repeat(193),
            &format!("{}g", "a".repeat(63)),
        ] {
            assert!(measurement(m).is_err(), "{m:?}");
        }
        assert!(measurement(&"A".repeat(192)).is_ok());
        let bad = [
            DevResult {
                ttl: Duration::ZERO,
                ..result(Tee::SevSnp)
            },
            DevResult {
                ttl: Duration::from_secs(90_000),
                ..result(Tee::SevSnp)
            },
            DevResult {
                nonce: Some(String::new()),
                ..result(Tee::SevSnp)
            },
            DevResult {
                iat_offset: i64::MIN,
                ..result(Tee::SevSnp)
            },
        ];
        for r in bad {
            assert!(claims("i", &r, 0).is_err(), "{r:?}");
        }
    }

    #[test]
    fn minted_result_verifies_with_the_verifier_key() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let info = json!({"issuer": "https://dev-attestation.keybroker.invalid", "kid": "dev-att-1",
                          "profile": "ear", "layout": "trustee", "future": 1});
        let public = make_verifier(dir.path(), &info)?;
        let token = mint(dir.path(), &result(Tee::SevSnp))?;
        let header = jsonwebtoken::decode_header(token.as_str())?;
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some("dev-att-1"));
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_required_spec_claims(&["exp", "iat", "iss"]);
        v.validate_aud = false;
        let key = DecodingKey::from_ed_pem(public.as_bytes())?;
        let data = jsonwebtoken::decode::<Value>(token.as_str(), &key, &v)?;
        assert_eq!(data.claims["eat_profile"], EAR_PROFILE);
        Ok(())
    }

    #[test]
    fn another_profile_or_a_missing_dir_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let msg = |r: Result<Zeroizing<String>, DevAttestationError>| {
            r.err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(msg(mint(dir.path(), &result(Tee::Tdx))).contains("dev-attestation/verifier.json"));
        make_verifier(
            dir.path(),
            &json!({"issuer": "i", "kid": "k", "profile": "azure-attestation"}),
        )?;
        assert!(msg(mint(dir.path(), &result(Tee::Tdx))).contains("profile must be \"ear\""));
        Ok(())
    }
}
