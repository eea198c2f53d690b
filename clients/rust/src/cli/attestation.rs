//! `keybroker attestation nonce`: a one-shot nonce for an attestation result, printed bare
//! (whatever `--output` says) so that `N=$(keybroker attestation nonce)` works.

use std::io::Write;

use clap::Subcommand;

use super::GlobalArgs;
use super::error::CliError;

/// `attestation` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AttestationCmd {
    /// Print a fresh nonce bound to this caller: put it in the TEE's runtime data, then send
    /// the verifier's result with one `datakey` call (--attestation-file) within minutes.
    Nonce,
}

impl AttestationCmd {
    /// Connects with `global`, asks for the nonce, prints it.
    ///
    /// # Errors
    /// Client errors, output errors.
    pub(crate) async fn run(
        &self,
        global: &GlobalArgs,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        match self {
            Self::Nonce => {
                let client = super::connect(global).await?;
                let nonce = client.attestation_nonce().await?;
                writeln!(out, "{}", nonce.nonce)?;
            }
        }
        Ok(())
    }
}
