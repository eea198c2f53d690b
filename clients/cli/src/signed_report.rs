//! `--sign-with KEY` of `drill revoke|compromise` and `leases revoke`: the report is written as
//! a DSSE envelope over an in-toto Statement v1 whose predicate is the report and whose subject
//! names what the report is about with the SHA-256 of the report's JSON; the signature is an
//! audit record, and `<FILE>.receipt.json` holds its inclusion proof under a signed checkpoint.
//! So "revocation was tested" / "the job's keys were revoked at T" is a signed, logged statement.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keybroker_client::Client;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::attest::statement;
use super::error::CliError;

/// Predicate type of a drill report.
pub(crate) const DRILL_REPORT: &str = "urn:keybroker:drill-report:v1";
/// Predicate type of a job-teardown (lease revocation) report.
pub(crate) const TEARDOWN_REPORT: &str = "urn:keybroker:teardown-report:v1";

/// The `--sign-with` flag (it needs `--report`).
#[derive(Debug, Default, clap::Args)]
pub(crate) struct SignWith {
    /// Sign the report with this SIGN key: --report then holds a DSSE envelope (in-toto
    /// statement, the report as predicate) and FILE.receipt.json its transparency receipt.
    #[arg(long, value_name = "KEY", requires = "report")]
    sign_with: Option<String>,
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

impl SignWith {
    /// Without `--sign-with`, returns `file` for the plain JSON report. With it, signs and
    /// writes the envelope to `file` and the receipt beside it, and returns `None`.
    ///
    /// # Errors
    /// Client errors (policy, a key that is not a SIGN key), I/O errors.
    pub(crate) async fn write<'a, T: Serialize>(
        &self,
        client: &Client,
        report: &T,
        file: Option<&'a PathBuf>,
        (subject, predicate_type): (&str, &str),
    ) -> Result<Option<&'a PathBuf>, CliError> {
        let (Some(key), Some(path)) = (&self.sign_with, file) else {
            return Ok(file);
        };
        let value =
            serde_json::to_value(report).map_err(|e| CliError::Usage(format!("report: {e}")))?;
        let bytes =
            serde_json::to_vec(&value).map_err(|e| CliError::Usage(format!("report: {e}")))?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let body = statement(&[(subject.to_owned(), digest)], predicate_type, value)?;
        let signed = client.sign_dsse(key, &body).await?;
        write(path, &signed.envelope)?;
        let receipt = client
            .receipt(signed.audit_index, Duration::from_secs(30))
            .await?;
        let text = serde_json::to_vec_pretty(&receipt)
            .map_err(|e| CliError::Usage(format!("receipt: {e}")))?;
        let mut receipt_path = path.clone().into_os_string();
        receipt_path.push(".receipt.json");
        write(Path::new(&receipt_path), &text)?;
        Ok(None)
    }
}
