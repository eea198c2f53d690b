//! `CliError`: what a `keybroker` command can fail with, on top of the library's errors. Its
//! `Display` is what the user sees after `error: `; it never holds a token or key material.

use keybroker_client::ClientError;
use keybroker_client::dev_token::DevTokenError;

/// The error and its causes, each added only if the message does not already include it.
pub(crate) fn describe(err: &CliError) -> String {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// An error of one `keybroker` command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A required setting was given neither as a flag nor in the environment.
    #[error("no {what}: pass --{flag} or set {env} (dev mode: `source <state-dir>/client.env`)")]
    Missing {
        /// What is missing, e.g. "endpoint".
        what: &'static str,
        /// The flag, without dashes.
        flag: &'static str,
        /// The environment variable.
        env: &'static str,
    },
    /// Arguments that parse but do not make sense together or are invalid.
    #[error("{0}")]
    Usage(String),
    /// The ciphertext argument is not standard base64.
    #[error("ciphertext is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// An error from the client library (config, transport, gRPC status).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Minting or writing a dev token failed.
    #[error(transparent)]
    DevToken(#[from] DevTokenError),
    /// Minting a dev attestation result failed.
    #[error(transparent)]
    DevAttestation(#[from] keybroker_client::dev_attestation::DevAttestationError),
    /// A recipient key file was refused.
    #[error(transparent)]
    Recipient(#[from] keybroker_client::RecipientKeyError),
    /// A KBEF file is malformed or failed authentication (`encrypt`/`decrypt`).
    #[error(transparent)]
    File(#[from] keybroker_client::file::FileFormatError),
    /// Offline audit verification found a problem (the first one).
    #[error("audit verification failed: {0}")]
    Audit(#[source] keybroker_client::audit::tiles::VerifyError),
    /// A checkpoint kept earlier does not fit the directory (rolled back or rewritten).
    #[error("audit verification failed: {0}")]
    Rollback(#[source] keybroker_client::audit::rollback::RollbackError),
    /// A checkpoint or verifier key was refused.
    #[error("audit checkpoint: {0}")]
    Note(#[source] keybroker_client::audit::note::NoteError),
    /// An inclusion proof did not verify.
    #[error("audit proof refused: {0}")]
    Proof(#[source] keybroker_client::audit::proof::ProofError),
    /// `bench` could not set up or run its target (HSM, OpenBao, runtime).
    #[error("bench: {0}")]
    Bench(String),
    /// Writing the output failed (e.g. a closed pipe).
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}
