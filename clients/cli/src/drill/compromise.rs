//! `keybroker drill compromise KEY --scope PREFIX FILES…`: the key-compromise drill.
//!
//! 1. DisableKey: every use of the key stops at once.
//! 2. RotateKey (allowed on a disabled key): a fresh version N+1.
//! 3. EnableKey: re-encryption needs the compromised version N to open; during this window
//!    new encryptions already use N+1 (the report gives its length).
//! 4. ReEncrypt every file (a ciphertext envelope, raw or standard base64) to N+1, writing it
//!    back atomically in the same encoding. A file of another key is not sent at all.
//! 5. DisableKey on version N: what was not moved no longer opens.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use super::super::GlobalArgs;
use super::super::args::{pairs_to_map, parse_pair};
use super::super::error::CliError;
use super::super::output::{Format, b64, from_b64};
use super::{check_scope, emit, enabled_key, now_text};

/// `drill compromise KEY --scope PREFIX FILES…`.
#[derive(Debug, Args)]
pub(crate) struct CompromiseArgs {
    /// Key whose current version is treated as compromised.
    key: String,
    /// Name prefix the drill may touch (required): a key outside it is refused.
    #[arg(long, value_name = "PREFIX", required = true)]
    scope: String,
    /// Encryption context of the files (repeatable), as used when they were made.
    #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    #[command(flatten)]
    sign: super::super::signed_report::SignWith,
    /// Ciphertext files to move to the new version.
    #[arg(required = true, value_name = "FILES")]
    files: Vec<PathBuf>,
}

/// One file's fate.
#[derive(Debug, Serialize)]
struct FileResult {
    file: String,
    moved: bool,
    from_version: Option<u32>,
    to_version: Option<u32>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct CompromiseReport {
    drill: &'static str,
    drill_id: String,
    key: String,
    scope: String,
    started_at: String,
    finished_at: String,
    compromised_version: u32,
    new_version: u32,
    reenabled_window_ms: f64,
    compromised_version_disabled: bool,
    moved: Vec<FileResult>,
    failed: Vec<FileResult>,
    /// The audit records of every call the drill made (request ids `drill-<drill_id>-<n>`).
    audit: super::span::AuditSpan,
    passed: bool,
}

/// Key name and version of an envelope v1 header (docs/ciphertext-format.md), if it is one.
fn envelope_key(ct: &[u8]) -> Option<(String, u32)> {
    let (magic, rest) = ct.split_first_chunk::<3>()?;
    if magic != b"KB\x01" {
        return None;
    }
    let (&n, rest) = rest.split_first()?;
    let name = std::str::from_utf8(rest.get(..usize::from(n))?).ok()?;
    let v = rest.get(usize::from(n)..usize::from(n) + 4)?;
    Some((name.to_owned(), u32::from_be_bytes(v.try_into().ok()?)))
}

/// File contents as ciphertext bytes, and whether they were base64 text.
fn read_ciphertext(path: &Path) -> Result<(Vec<u8>, bool), String> {
    let raw = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if envelope_key(&raw).is_some() {
        return Ok((raw, false));
    }
    let text = std::str::from_utf8(&raw).map_err(|_| "not a ciphertext envelope".to_owned())?;
    let bytes = from_b64(text).map_err(|_| "not a ciphertext envelope nor base64".to_owned())?;
    Ok((bytes, true))
}

/// Replaces `path` atomically (temp file in the same directory, fsync, rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("kb-drill-tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write back: {e}"))
}

impl CompromiseArgs {
    pub(crate) async fn run(
        &self,
        g: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        check_scope(&self.key, &self.scope)?;
        let ctx = pairs_to_map("context", &self.context)?;
        let operator = super::super::connect(g).await?;
        let started_at = now_text();
        let drill_id = uuid::Uuid::new_v4().to_string();
        let tagged = super::span::Tagged::new(&operator, &drill_id).await?;
        let c = &tagged.client;
        let info = enabled_key(c, &self.key).await?;
        let compromised = info.primary_version;
        c.disable_key(&self.key, 0).await?;
        let rotated = c.rotate_key(&self.key).await?;
        let new_version = rotated.primary_version;
        let window = Instant::now();
        c.enable_key(&self.key, 0).await?;
        let (mut moved, mut failed) = (Vec::new(), Vec::new());
        for path in &self.files {
            let r = self.move_file(c, path, &ctx, new_version).await;
            if r.moved {
                moved.push(r)
            } else {
                failed.push(r)
            }
        }
        let disabled = c.disable_key(&self.key, compromised).await.is_ok();
        let reenabled_window_ms = (window.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        let passed = disabled && failed.is_empty() && new_version > compromised;
        let audit = tagged.collect(&self.key).await;
        let report = CompromiseReport {
            drill: "compromise",
            drill_id,
            audit,
            key: self.key.clone(),
            scope: self.scope.clone(),
            started_at,
            finished_at: now_text(),
            compromised_version: compromised,
            new_version,
            reenabled_window_ms,
            compromised_version_disabled: disabled,
            moved,
            failed,
            passed,
        };
        let verdict = (
            passed,
            "compromise drill: some artifacts were not moved, see the report",
        );
        let about = (self.key.as_str(), super::super::signed_report::DRILL_REPORT);
        let file = (self.sign)
            .write(&operator, &report, self.report.as_ref(), about)
            .await?;
        emit(&report, verdict, format, out, file, |w| text(&report, w))
    }

    async fn move_file(
        &self,
        c: &keybroker_client::Client,
        path: &Path,
        ctx: &std::collections::BTreeMap<String, String>,
        new_version: u32,
    ) -> FileResult {
        let mut r = FileResult {
            file: path.display().to_string(),
            moved: false,
            from_version: None,
            to_version: None,
            error: None,
        };
        let (ct, base64) = match read_ciphertext(path) {
            Ok(x) => x,
            Err(e) => {
                r.error = Some(e);
                return r;
            }
        };
        match envelope_key(&ct) {
            Some((k, v)) if k == self.key => r.from_version = Some(v),
            Some((k, _)) => {
                r.error = Some(format!(
                    "ciphertext of key {k:?}, not {:?}: not sent",
                    self.key
                ));
                return r;
            }
            None => {
                r.error = Some("not a ciphertext envelope".into());
                return r;
            }
        }
        if r.from_version == Some(new_version) {
            r.moved = true;
            r.to_version = Some(new_version);
            return r;
        }
        match c.re_encrypt(&ct, ctx).await {
            Ok(re) => {
                let bytes = if base64 {
                    let mut s = b64(&re.ciphertext).to_string();
                    s.push('\n');
                    s.into_bytes()
                } else {
                    re.ciphertext.clone()
                };
                match write_atomic(path, &bytes) {
                    Ok(()) => {
                        r.moved = true;
                        r.to_version = Some(re.key_version);
                    }
                    Err(e) => r.error = Some(e),
                }
            }
            Err(e) => r.error = Some(e.to_string()),
        }
        r
    }
}

fn text(r: &CompromiseReport, w: &mut dyn Write) -> std::io::Result<()> {
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    writeln!(
        w,
        "compromise drill {verdict}: key {} (scope {})",
        r.key, r.scope
    )?;
    writeln!(w, "  window:      {} .. {}", r.started_at, r.finished_at)?;
    writeln!(
        w,
        "  versions:    v{} compromised -> v{} (v{} disabled: {})",
        r.compromised_version, r.new_version, r.compromised_version, r.compromised_version_disabled
    )?;
    writeln!(
        w,
        "  re-enabled for re-encryption: {:.3} ms",
        r.reenabled_window_ms
    )?;
    writeln!(w, "  moved ({}):", r.moved.len())?;
    for f in &r.moved {
        writeln!(
            w,
            "    {}  v{} -> v{}",
            f.file,
            f.from_version.unwrap_or(0),
            f.to_version.unwrap_or(0)
        )?;
    }
    writeln!(w, "  not moved ({}):", r.failed.len())?;
    for f in &r.failed {
        writeln!(w, "    {}  {}", f.file, f.error.as_deref().unwrap_or(""))?;
    }
    writeln!(w, "  drill id:      {}", r.drill_id)?;
    writeln!(w, "  audit records: {}", super::span::text(&r.audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_header_names_key_and_version() {
        let mut ct = b"KB\x01\x05drill".to_vec();
        ct.extend_from_slice(&7u32.to_be_bytes());
        ct.extend_from_slice(&[0; 28]);
        assert_eq!(envelope_key(&ct), Some(("drill".to_owned(), 7)));
        assert_eq!(envelope_key(b"KB\x02\x01a\0\0\0\x01"), None);
        assert_eq!(envelope_key(b"KB\x01\x09short"), None);
        assert_eq!(envelope_key(b""), None);
    }
}
