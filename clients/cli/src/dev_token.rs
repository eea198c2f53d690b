//! `keybroker dev-token --state-dir DIR [--ttl 1h] [--out FILE] [--service-account NAME]`:
//! mints a token from the dev issuer of a `keybrokerd dev` state dir. Prints the raw token (whatever `--output` says, so
//! `$(keybroker dev-token …)` works), or writes it atomically with mode 0600 to `--out`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use keybroker_client::dev_token;

use super::args::parse_ttl;
use super::error::CliError;

/// Arguments of `dev-token`.
#[derive(Debug, Args)]
pub(crate) struct DevTokenArgs {
    /// State directory of `keybrokerd dev` (holds dev-issuer/).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// Token lifetime, e.g. 15m, 1h, 1d.
    #[arg(long, value_parser = parse_ttl, default_value = "1h")]
    ttl: Duration,
    /// Write the token to this file (mode 0600, atomic replace) instead of printing it, e.g.
    /// the KEYBROKER_TOKEN_FILE of client.env.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Speak for another service account of the dev namespace (a second workload), e.g.
    /// evaluator.
    #[arg(long, value_name = "NAME")]
    service_account: Option<String>,
}

impl DevTokenArgs {
    /// Mints the token and prints or writes it.
    ///
    /// # Errors
    /// Dev issuer files missing or invalid, output file not writable, output errors.
    pub(crate) fn run(&self, out: &mut dyn Write) -> Result<(), CliError> {
        let workload = dev_token::Workload {
            job: None,
            service_account: self.service_account.as_deref(),
        };
        let token = dev_token::mint_for(&self.state_dir, self.ttl, &workload)?;
        match &self.out {
            Some(path) => dev_token::write_token_file(path, &token)?,
            None => writeln!(out, "{}", token.as_str())?,
        }
        Ok(())
    }
}
