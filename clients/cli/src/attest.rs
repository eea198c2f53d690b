//! `keybroker attest`: an in-toto Statement v1 (subjects = the given files with their SHA-256,
//! the predicate type and the predicate JSON) signed by a SIGN key as a DSSE envelope, which
//! the in-toto and securesystemslib libraries verify with the key's PEM. The signature's audit
//! record makes it a transparency-log entry; `--receipt` writes its inclusion proof.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::GlobalArgs;
use super::error::CliError;
use super::output::{Format, write_json};
use super::sign::file_digest;

/// `keybroker attest --predicate-type URI --predicate FILE --subject FILE… --key-name K`
#[derive(Debug, clap::Args)]
pub(crate) struct AttestArgs {
    /// The predicate type URI, e.g. `https://slsa.dev/provenance/v1`.
    #[arg(long, value_name = "URI")]
    predicate_type: String,
    /// JSON file holding the predicate (an object).
    #[arg(long, value_name = "FILE")]
    predicate: PathBuf,
    /// A file the statement is about (repeatable); its name is the path as given.
    #[arg(long = "subject", value_name = "FILE", required = true)]
    subjects: Vec<PathBuf>,
    /// SIGN key.
    #[arg(long = "key-name", short = 'k', value_name = "KEY")]
    key_name: String,
    /// Write the DSSE envelope here; without it, the envelope is printed.
    #[arg(long, value_name = "FILE")]
    envelope: Option<PathBuf>,
    /// Write the transparency receipt (record, inclusion proof, checkpoint) here.
    #[arg(long, value_name = "FILE")]
    receipt: Option<PathBuf>,
}

/// The in-toto Statement v1 of `subjects` (name, SHA-256 hex) with a predicate.
pub(crate) fn statement(
    subjects: &[(String, [u8; 32])],
    predicate_type: &str,
    predicate: serde_json::Value,
) -> Result<Vec<u8>, CliError> {
    let subject: Vec<_> = subjects
        .iter()
        .map(|(name, d)| serde_json::json!({"name": name, "digest": {"sha256": hex::encode(d)}}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subject,
        "predicateType": predicate_type,
        "predicate": predicate,
    }))
    .map_err(|e| CliError::Usage(format!("statement: {e}")))
}

impl AttestArgs {
    pub(crate) async fn run(
        &self,
        global: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        let text = std::fs::read_to_string(&self.predicate).map_err(|e| {
            CliError::Usage(format!("--predicate {}: {e}", self.predicate.display()))
        })?;
        let predicate: serde_json::Value = serde_json::from_str(&text)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| CliError::Usage("--predicate must hold a JSON object".into()))?;
        let mut subjects = Vec::with_capacity(self.subjects.len());
        for path in &self.subjects {
            subjects.push((path.display().to_string(), file_digest(path).await?));
        }
        let body = statement(&subjects, &self.predicate_type, predicate)?;
        let client = super::connect(global).await?;
        let signed = client.sign_dsse(&self.key_name, &body).await?;
        if let Some(path) = &self.receipt {
            let receipt = client
                .receipt(signed.audit_index, Duration::from_secs(30))
                .await?;
            let text = serde_json::to_vec_pretty(&receipt)
                .map_err(|e| CliError::Usage(format!("receipt: {e}")))?;
            std::fs::write(path, text)
                .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
        }
        match &self.envelope {
            Some(path) => {
                std::fs::write(path, &signed.envelope)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
                let o = serde_json::json!({
                    "envelope": path.display().to_string(), "key": signed.key,
                    "key_version": signed.key_version, "keyid": signed.keyid,
                    "algorithm": signed.algorithm.as_str(), "audit_index": signed.audit_index,
                });
                match format {
                    Format::Json => write_json(out, &o)?,
                    Format::Text => writeln!(out, "{}", path.display())?,
                }
            }
            None => {
                out.write_all(&signed.envelope)?;
                writeln!(out)?;
            }
        }
        Ok(())
    }
}
