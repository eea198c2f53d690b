//! `keybroker dev-attestation --state-dir DIR --tee sev-snp|tdx --measurement HEX [--debug]
//! --nonce N [--recipient-key PEM] [--ttl 5m]`: mints an attestation result from the dev
//! verifier of a `keybrokerd dev` state dir (layout in `keybroker_client::dev_attestation`) and
//! prints it bare. Hidden switches make the results the broker must refuse: `--no-tee`,
//! `--no-nonce`, `--iat-offset SECONDS`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use keybroker_client::RecipientKey;
use keybroker_client::dev_attestation::{self, DevResult, Tee};

use super::args::parse_ttl;
use super::error::CliError;

/// The `--tee` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TeeArg {
    /// AMD SEV-SNP.
    SevSnp,
    /// Intel TDX.
    Tdx,
}

/// Arguments of `dev-attestation`.
#[derive(Debug, Args)]
pub(crate) struct DevAttestationArgs {
    /// State directory of `keybrokerd dev` (holds dev-attestation/).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// The TEE the result claims.
    #[arg(long, value_enum)]
    tee: TeeArg,
    /// Launch measurement (SEV-SNP) or MRTD (TDX): 64 to 192 hex digits.
    #[arg(long, value_name = "HEX", value_parser = parse_measurement)]
    measurement: String,
    /// The TEE runs with debugging allowed.
    #[arg(long)]
    debug: bool,
    /// The nonce from `keybroker attestation nonce`.
    #[arg(long, value_name = "N", required_unless_present = "no_nonce")]
    nonce: Option<String>,
    /// X25519 key PEM (private, or public alone) the TEE holds: bound as its `tee-pubkey`, so
    /// the key can be released sealed to it.
    #[arg(long, value_name = "PEM")]
    recipient_key: Option<PathBuf>,
    /// Lifetime of the result.
    #[arg(long, value_parser = parse_ttl, default_value = "5m")]
    ttl: Duration,
    /// Test only: leave out the `tee` claim.
    #[arg(long, hide = true)]
    no_tee: bool,
    /// Test only: leave out the nonce.
    #[arg(long, hide = true, conflicts_with = "nonce")]
    no_nonce: bool,
    /// Test only: shift `iat` by this many seconds (negative: an old result), e.g. -600.
    #[arg(long, hide = true, value_name = "SECONDS", allow_negative_numbers = true,
          value_parser = parse_offset, default_value = "0")]
    iat_offset: i64,
}

impl DevAttestationArgs {
    /// Mints the result and prints it.
    ///
    /// # Errors
    /// Dev verifier files missing or invalid, an unusable recipient key, output errors.
    pub(crate) fn run(&self, out: &mut dyn Write) -> Result<(), CliError> {
        let recipient = match &self.recipient_key {
            Some(path) => Some(
                RecipientKey::read_pem_file(path)?
                    .public_key()
                    .map_err(|_| CliError::Usage("--recipient-key is not an X25519 key".into()))?,
            ),
            None => None,
        };
        let result = DevResult {
            tee: match self.tee {
                TeeArg::SevSnp => Tee::SevSnp,
                TeeArg::Tdx => Tee::Tdx,
            },
            omit_tee: self.no_tee,
            measurement: self.measurement.clone(),
            debug: self.debug,
            nonce: self.nonce.clone(),
            recipient,
            ttl: self.ttl,
            iat_offset: self.iat_offset,
        };
        let token = dev_attestation::mint(&self.state_dir, &result)?;
        writeln!(out, "{}", token.as_str())?;
        Ok(())
    }
}

/// `--measurement`: hex, 64 to 192 digits.
fn parse_measurement(s: &str) -> Result<String, String> {
    dev_attestation::measurement(s).map_err(|e| e.to_string())
}

/// `--iat-offset`: signed seconds, with an optional `s`.
fn parse_offset(s: &str) -> Result<i64, String> {
    s.strip_suffix('s')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("invalid offset {s:?}: want signed seconds such as -600"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_signed_seconds() {
        assert_eq!(parse_offset("-600"), Ok(-600));
        assert_eq!(parse_offset("-600s"), Ok(-600));
        assert_eq!(parse_offset("30"), Ok(30));
        assert!(parse_offset("-10m").is_err() && parse_offset("").is_err());
    }
}
