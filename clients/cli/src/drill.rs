//! `keybroker drill revoke|compromise`: rehearse stopping a key and prove it stopped.
//!
//! A drill needs an operator identity (it calls KeyAdmin) and a `--scope` prefix; it refuses,
//! before any call, a key outside that prefix. `drill revoke` runs probe traffic, disables the
//! key, measures time-to-deny (from DisableKey returning to the first denied probe that started
//! after it), proves that no probe started after the return succeeded, checks that an archived
//! ciphertext no longer opens, re-enables (unless `--keep-disabled`) and checks it works again.
//! The compromise drill is in `drill/compromise.rs`.

mod compromise;
mod probe;
mod span;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use keybroker_client::{Client, KeyState};
use serde::Serialize;
use time::OffsetDateTime;

use super::GlobalArgs;
use super::error::CliError;
use super::output::{Format, rfc3339, write_json};

/// `drill` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DrillCmd {
    /// Revocation drill: probe traffic, disable, time-to-deny, archived ciphertext denied,
    /// re-enable (unless --keep-disabled), works again.
    Revoke(RevokeArgs),
    /// Key-compromise drill: disable, rotate, re-encrypt the given ciphertext files to the new
    /// version, disable the compromised version.
    Compromise(compromise::CompromiseArgs),
}

/// `drill revoke KEY --scope PREFIX`.
#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// Key to drill on.
    key: String,
    /// Name prefix the drill may touch (required): a key outside it is refused.
    #[arg(long, value_name = "PREFIX", required = true)]
    scope: String,
    /// Leave the key disabled at the end.
    #[arg(long)]
    keep_disabled: bool,
    /// Concurrent probe workers.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    probes: u16,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    #[command(flatten)]
    sign: super::signed_report::SignWith,
}

impl DrillCmd {
    /// Runs the drill and prints its report.
    ///
    /// # Errors
    /// Scope violations before any call; client errors; `Usage` naming what failed when the
    /// drill ran but did not pass (the report is printed first).
    pub(crate) async fn run(
        &self,
        g: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        match self {
            Self::Revoke(a) => a.run(g, format, out).await,
            Self::Compromise(a) => a.run(g, format, out).await,
        }
    }
}

/// Refuses a key outside `scope`, and an empty scope.
///
/// # Errors
/// `Usage` saying why.
pub(crate) fn check_scope(key: &str, scope: &str) -> Result<(), CliError> {
    if scope.is_empty() {
        return Err(CliError::Usage(
            "--scope must not be empty: a drill needs a key name prefix it may touch".into(),
        ));
    }
    if !key.starts_with(scope) {
        return Err(CliError::Usage(format!(
            "key {key:?} is outside the drill scope {scope:?}: refused, nothing was changed"
        )));
    }
    Ok(())
}

/// Loads the key and refuses unless it is enabled.
pub(crate) async fn enabled_key(
    c: &Client,
    key: &str,
) -> Result<keybroker_client::KeyInfo, CliError> {
    let info = c.get_key(key).await?;
    if info.state != KeyState::Enabled {
        return Err(CliError::Usage(format!(
            "key {key:?} is {}; a drill starts from an enabled key",
            info.state.as_str()
        )));
    }
    Ok(info)
}

/// Writes the report as JSON or through `text`, and to `file` when given; then fails with
/// `failed` unless the drill `passed`.
pub(crate) fn emit<T: Serialize>(
    report: &T,
    (passed, failed): (bool, &str),
    format: Format,
    out: &mut dyn Write,
    file: Option<&PathBuf>,
    text: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), CliError> {
    if let Some(path) = file {
        let mut f = std::fs::File::create(path)?;
        write_json(&mut f, report)?;
    }
    match format {
        Format::Json => write_json(out, report)?,
        Format::Text => text(out)?,
    }
    if passed {
        Ok(())
    } else {
        Err(CliError::Usage(failed.to_owned()))
    }
}

pub(crate) fn now_text() -> String {
    rfc3339(Some(OffsetDateTime::now_utc())).unwrap_or_default()
}

/// The report of `drill revoke`.
#[derive(Debug, Serialize)]
struct RevokeReport {
    drill: &'static str,
    drill_id: String,
    key: String,
    scope: String,
    started_at: String,
    finished_at: String,
    disable_called_at: String,
    disable_returned_at: String,
    disable_call_ms: f64,
    /// From DisableKey returning to the completion of the first denied probe that started
    /// after it: what a workload sees on its next request.
    time_to_deny_ms: Option<f64>,
    probes: probe::ProbeStats,
    archived_ciphertext_denied: bool,
    archived_denial: String,
    re_enabled: bool,
    works_again: Option<bool>,
    /// The audit records of every call the drill made (request ids `drill-<drill_id>-<n>`).
    audit: span::AuditSpan,
    passed: bool,
}

impl RevokeArgs {
    async fn run(
        &self,
        g: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        check_scope(&self.key, &self.scope)?;
        let operator = super::connect(g).await?;
        let started_at = now_text();
        let drill_id = uuid::Uuid::new_v4().to_string();
        let tagged = span::Tagged::new(&operator, &drill_id).await?;
        let c = &tagged.client;
        enabled_key(c, &self.key).await?;
        let ctx = probe::context("revoke", &drill_id);
        // The archived ciphertext: made (and opened once) before the disable.
        let archived = c.generate_data_key(&self.key, &ctx, None).await?;
        c.decrypt(&archived.ciphertext, &ctx, None).await?;

        let run = probe::Probes::start(c, &self.key, &ctx, &archived.ciphertext, self.probes);
        run.wait_for_successes(usize::from(self.probes) * 5).await;
        let disable_called_at = now_text();
        let called = std::time::Instant::now();
        let disabled = c.disable_key(&self.key, 0).await;
        let returned = std::time::Instant::now();
        let disable_returned_at = now_text();
        run.mark_disabled(returned);
        let samples = run.finish_after_disable(usize::from(self.probes) * 5).await;
        disabled?;
        let stats = probe::ProbeStats::of(&samples, returned);

        let archived_result = c.decrypt(&archived.ciphertext, &ctx, None).await;
        let archived_denial = match &archived_result {
            Ok(_) => "opened".to_owned(),
            Err(e) => e.code().map_or_else(
                || e.to_string(),
                |c| keybroker_client::code_name(c).to_owned(),
            ),
        };
        let archived_ciphertext_denied = archived_denial == "FAILED_PRECONDITION";
        let mut works_again = None;
        if !self.keep_disabled {
            c.enable_key(&self.key, 0).await?;
            let opened = c.decrypt(&archived.ciphertext, &ctx, None).await;
            let generated = c.generate_data_key(&self.key, &ctx, None).await;
            works_again = Some(opened.is_ok() && generated.is_ok());
        }
        let passed = stats.succeeded_after_disable_returned == 0
            && stats.started_after_disable_returned > 0
            && archived_ciphertext_denied
            && works_again.unwrap_or(true);
        let audit = tagged.collect(&self.key).await;
        let report = RevokeReport {
            drill: "revoke",
            audit,
            drill_id,
            key: self.key.clone(),
            scope: self.scope.clone(),
            started_at,
            finished_at: now_text(),
            disable_called_at,
            disable_returned_at,
            disable_call_ms: ms(returned - called),
            time_to_deny_ms: stats.time_to_deny.map(ms),
            probes: stats,
            archived_ciphertext_denied,
            archived_denial,
            re_enabled: !self.keep_disabled,
            works_again,
            passed,
        };
        let verdict = (passed, "revocation drill FAILED: see the report");
        let about = (self.key.as_str(), super::signed_report::DRILL_REPORT);
        let file = (self.sign)
            .write(&operator, &report, self.report.as_ref(), about)
            .await?;
        emit(&report, verdict, format, out, file, |w| {
            revoke_text(&report, w)
        })
    }
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn revoke_text(r: &RevokeReport, w: &mut dyn Write) -> std::io::Result<()> {
    let verdict = if r.passed { "PASSED" } else { "FAILED" };
    writeln!(
        w,
        "revocation drill {verdict}: key {} (scope {})",
        r.key, r.scope
    )?;
    writeln!(w, "  drill id:          {}", r.drill_id)?;
    writeln!(
        w,
        "  window:            {} .. {}",
        r.started_at, r.finished_at
    )?;
    writeln!(
        w,
        "  DisableKey:        called {}, returned after {:.3} ms",
        r.disable_called_at, r.disable_call_ms
    )?;
    match r.time_to_deny_ms {
        Some(t) => writeln!(
            w,
            "  time-to-deny:      {t:.3} ms until the first denial of a probe started after \
             DisableKey returned (it started {:.3} ms after the return; one probe round trip \
             is {:.3} ms)",
            r.probes.first_probe_after_disable_started_ms.unwrap_or(0.0),
            r.probes.median_round_trip_ms.unwrap_or(0.0)
        )?,
        None => writeln!(
            w,
            "  time-to-deny:      no probe started after the disable returned"
        )?,
    }
    let p = &r.probes;
    writeln!(
        w,
        "  probes:            {} total, {} ok before the disable, {} started after it returned, {} of those succeeded",
        p.total, p.succeeded, p.started_after_disable_returned, p.succeeded_after_disable_returned
    )?;
    writeln!(
        w,
        "  archived ciphertext after disable: {}",
        r.archived_denial
    )?;
    match r.works_again {
        Some(ok) => writeln!(w, "  re-enabled:        works again: {ok}")?,
        None => writeln!(w, "  re-enabled:        no (--keep-disabled)")?,
    }
    writeln!(w, "  audit records:     {}", span::text(&r.audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_required_non_empty_and_a_prefix() {
        assert!(check_scope("drills/a", "drills/").is_ok());
        assert!(check_scope("datasets/a", "drills/").is_err());
        assert!(check_scope("drills/a", "").is_err());
        let msg = check_scope("prod/x", "drills/")
            .err()
            .map(|e| e.to_string());
        assert!(msg.unwrap_or_default().contains("outside the drill scope"));
    }

    #[test]
    fn drill_without_scope_does_not_parse() {
        use clap::Parser as _;
        let r = super::super::Cli::try_parse_from(["keybroker", "drill", "revoke", "drills/a"]);
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("--scope"), "{msg}");
        let r = super::super::Cli::try_parse_from(["keybroker", "drill", "compromise", "k", "f"]);
        assert!(r.is_err());
    }
}
