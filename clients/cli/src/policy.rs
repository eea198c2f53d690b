//! `keybroker policy check FILE…`: validates Cedar policy files offline against keybroker's
//! schema, with the same checks the broker runs on load and on SIGHUP. Exit status 0 only when
//! every file passes; each refused file is named with every problem found.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use serde::Serialize;

use super::error::CliError;
use super::output::{Format, write_json};

/// Largest policy file read (a policy is text written by people; anything larger is a mistake).
const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// `keybroker policy …`.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Validate policy files against the schema (offline; no broker needed).
    Check {
        /// Cedar policy files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

#[derive(Serialize)]
struct Report {
    file: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policies: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl PolicyCmd {
    /// Checks every file, prints one report per file, fails if any file was refused.
    ///
    /// # Errors
    /// `Usage` naming how many files were refused; output errors.
    pub(crate) fn run(&self, format: Format, out: &mut dyn Write) -> Result<(), CliError> {
        let Self::Check { files } = self;
        let reports: Vec<Report> = files.iter().map(|f| check_file(f)).collect();
        match format {
            Format::Json => write_json(out, &reports)?,
            Format::Text => {
                for r in &reports {
                    match (&r.error, &r.sha256) {
                        // The error already names the file.
                        (Some(e), _) => writeln!(out, "refused: {e}")?,
                        (None, Some(sha)) => writeln!(
                            out,
                            "{}: ok ({} policies: {}; sha256 {sha})",
                            r.file,
                            r.policies.len(),
                            r.policies.join(", ")
                        )?,
                        (None, None) => writeln!(out, "{}: ok", r.file)?,
                    }
                }
            }
        }
        let refused = reports.iter().filter(|r| !r.valid).count();
        if refused > 0 {
            return Err(CliError::Usage(format!(
                "{refused} of {} policy files refused",
                reports.len()
            )));
        }
        Ok(())
    }
}

fn check_file(path: &std::path::Path) -> Report {
    let file = path.display().to_string();
    let refused = |error: String| Report {
        file: file.clone(),
        valid: false,
        sha256: None,
        policies: Vec::new(),
        error: Some(error),
    };
    match std::fs::metadata(path) {
        Err(e) => return refused(format!("cannot read: {e}")),
        Ok(m) if m.len() > MAX_POLICY_BYTES => {
            return refused(format!("larger than {MAX_POLICY_BYTES} bytes"));
        }
        Ok(_) => {}
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return refused(format!("cannot read: {e}")),
    };
    match keybroker_client::policy::check(&text, &file) {
        Ok(p) => Report {
            file: file.clone(),
            valid: true,
            sha256: Some(p.sha256),
            policies: p.ids,
            error: None,
        },
        Err(e) => refused(e.to_string()),
    }
}
