//! `keybroker attestation nonce`: a one-shot nonce for an attestation result, printed bare
//! (whatever `--output` says) so that `N=$(keybroker attestation nonce)` works; and
//! `keybroker attestation recipient-key --out PEM [--public-out PEM]`: a fresh X25519 key for
//! recipient release (run it inside the TEE: the private key must never leave it).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use keybroker_client::RecipientKey;

use super::GlobalArgs;
use super::error::CliError;

/// `attestation` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AttestationCmd {
    /// Print a fresh nonce bound to this caller: put it in the TEE's runtime data, then send
    /// the verifier's result with one `datakey` call (--attestation-file) within minutes.
    Nonce,
    /// Write a fresh X25519 key for `datakey --recipient-key`: the private key as a PKCS#8 PEM
    /// (mode 0600, never overwrites), and optionally its public key as an SPKI PEM.
    RecipientKey {
        /// The private key PEM to create.
        #[arg(long, value_name = "PEM")]
        out: PathBuf,
        /// Also write the public key PEM here (what the TEE's runtime data binds).
        #[arg(long, value_name = "PEM")]
        public_out: Option<PathBuf>,
    },
}

impl AttestationCmd {
    /// Runs the subcommand.
    ///
    /// # Errors
    /// Client errors, files that exist or cannot be written, output errors.
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
            Self::RecipientKey {
                out: path,
                public_out,
            } => {
                let key = RecipientKey::generate();
                write_new(path, key.to_pem()?.as_bytes(), 0o600)?;
                if let Some(public_path) = public_out {
                    let public = RecipientKey::Public(
                        key.public_key()
                            .map_err(|_| CliError::Usage("generated key is unusable".into()))?,
                    );
                    write_new(public_path, public.to_pem()?.as_bytes(), 0o644)?;
                }
            }
        }
        Ok(())
    }
}

/// Creates `path` (which must not exist) with `mode` from the start, writes and syncs it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), CliError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = options.open(path).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    result.map_err(|e| CliError::Usage(format!("cannot create {}: {e}", path.display())))
}
