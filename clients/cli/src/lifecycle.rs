//! Lifecycle commands: `keys update|disable|enable [--key-version N]|destroy` arguments and
//! `keybroker leases revoke --job ID | --principal SUB [--issuer ISS]` (job teardown).

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use keybroker_client::{KeyInfo, RevokeTarget};
use serde::Serialize;

use super::GlobalArgs;
use super::args::parse_ttl;
use super::error::CliError;
use super::output::{Format, rfc3339, write_json};

/// `keys disable|enable NAME [--version N]`.
#[derive(Debug, Args)]
pub(crate) struct StateArgs {
    /// Key name.
    name: String,
    /// Only this key version (default: the whole key). (`--version` prints the CLI version.)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    key_version: Option<u32>,
}

impl StateArgs {
    pub(crate) async fn run(&self, g: &GlobalArgs, enable: bool) -> Result<KeyInfo, CliError> {
        let c = super::connect(g).await?;
        let v = self.key_version.unwrap_or(0);
        Ok(if enable {
            c.enable_key(&self.name, v).await?
        } else {
            c.disable_key(&self.name, v).await?
        })
    }
}

/// `--rotation-period` value: a duration, or `None` for `off`. (A newtype: clap reads a bare
/// `Option<Option<_>>` as "flag with an optional value".)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Period(Option<Duration>);

fn parse_period(s: &str) -> Result<Period, String> {
    if s == "off" {
        Ok(Period(None))
    } else {
        parse_ttl(s).map(|d| Period(Some(d)))
    }
}

/// `keys update NAME [--min-decryption-version N] [--rotation-period DUR|off]`.
#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    /// Key name.
    name: String,
    /// Refuse ciphertexts of older versions (1 ..= the primary version).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    min_decryption_version: Option<u32>,
    /// Automatic rotation period (at least 1h), e.g. 30d; `off` turns it off.
    #[arg(long, value_name = "DURATION|off", value_parser = parse_period)]
    rotation_period: Option<Period>,
}

impl UpdateArgs {
    pub(crate) async fn run(&self, g: &GlobalArgs) -> Result<KeyInfo, CliError> {
        if self.min_decryption_version.is_none() && self.rotation_period.is_none() {
            return Err(CliError::Usage(
                "nothing to update: give --min-decryption-version and/or --rotation-period".into(),
            ));
        }
        let c = super::connect(g).await?;
        Ok(c.update_key(
            &self.name,
            self.min_decryption_version,
            self.rotation_period.map(|p| p.0),
        )
        .await?)
    }
}

/// `keys destroy NAME [--wait DUR]`.
#[derive(Debug, Args)]
pub(crate) struct DestroyArgs {
    /// Key name.
    name: String,
    /// Waiting period before the HSM objects are destroyed (default: the broker's, 7 days;
    /// never below its floor). Cancel with `keys cancel-destroy`.
    #[arg(long, value_parser = parse_ttl)]
    wait: Option<Duration>,
}

impl DestroyArgs {
    pub(crate) async fn run(&self, g: &GlobalArgs) -> Result<KeyInfo, CliError> {
        let c = super::connect(g).await?;
        Ok(c.schedule_key_destruction(&self.name, self.wait).await?)
    }
}

/// `leases` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum LeasesCmd {
    /// Revoke the leases of a job or principal: every further DataKeys call of theirs is
    /// refused (PERMISSION_DENIED) until the longest lease has run out. The job-teardown step.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["job", "principal"])))]
    Revoke {
        /// Job id (from the job claim of verified tokens).
        #[arg(long, value_name = "ID")]
        job: Option<String>,
        /// Principal subject, e.g. system:serviceaccount:ml-train:trainer.
        #[arg(long, value_name = "SUB")]
        principal: Option<String>,
        /// Only the principal of this token issuer (default: every issuer).
        #[arg(long, value_name = "ISS", requires = "principal")]
        issuer: Option<String>,
        /// Write a teardown report (target, leases revoked, until when, when) to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<std::path::PathBuf>,
        #[command(flatten)]
        sign: super::signed_report::SignWith,
    },
}

/// Exactly one of `job` and `principal`; `issuer` only with `principal`.
fn revoke_target(
    job: Option<&str>,
    principal: Option<&str>,
    issuer: Option<&str>,
) -> Result<RevokeTarget, CliError> {
    match (job, principal, issuer) {
        (Some(j), None, None) => Ok(RevokeTarget::Job(j.to_owned())),
        (None, Some(p), i) => Ok(RevokeTarget::Principal {
            subject: p.to_owned(),
            issuer: i.map(str::to_owned),
        }),
        _ => Err(CliError::Usage(
            "give exactly one of --job or --principal (--issuer only with --principal)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_period_is_a_duration_or_off() {
        assert_eq!(
            parse_period("30d"),
            Ok(Period(Some(Duration::from_secs(30 * 86_400))))
        );
        assert_eq!(parse_period("off"), Ok(Period(None)));
        assert!(parse_period("never").is_err());
    }

    #[test]
    fn revoke_target_needs_exactly_one_of_job_or_principal() {
        assert_eq!(
            revoke_target(Some("j"), None, None).ok(),
            Some(RevokeTarget::Job("j".into()))
        );
        assert!(revoke_target(Some("j"), None, Some("i")).is_err());
        assert!(revoke_target(None, None, None).is_err());
        assert!(revoke_target(Some("j"), Some("p"), None).is_err());
        assert!(revoke_target(None, Some("p"), Some("i")).is_ok());
    }

    #[test]
    fn lifecycle_commands_parse() {
        use clap::Parser as _;
        for args in [
            &["keys", "update", "k", "--rotation-period", "30d"][..],
            &[
                "keys",
                "update",
                "k",
                "--rotation-period",
                "off",
                "--min-decryption-version",
                "2",
            ],
            &["keys", "disable", "k", "--key-version", "3"],
            &["keys", "enable", "k"],
            &["keys", "destroy", "k", "--wait", "7d"],
            &["keys", "cancel-destroy", "k"],
            &["leases", "revoke", "--job", "j"],
            &["leases", "revoke", "--principal", "s", "--issuer", "i"],
        ] {
            let argv = std::iter::once("keybroker").chain(args.iter().copied());
            let parsed = super::super::Cli::try_parse_from(argv);
            assert!(parsed.is_ok(), "{args:?}: {:?}", parsed.err());
        }
        for bad in [
            &["leases", "revoke"][..],
            &["leases", "revoke", "--job", "j", "--principal", "s"],
            &["keys", "disable", "k", "--key-version", "0"],
        ] {
            let argv = std::iter::once("keybroker").chain(bad.iter().copied());
            assert!(super::super::Cli::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}

#[derive(Serialize)]
struct RevokeJson {
    leases_revoked: u32,
    revoked_until: Option<String>,
}

/// The `--report` of `leases revoke`: what was torn down, and when.
#[derive(Serialize)]
struct TeardownReport {
    report: &'static str,
    job: Option<String>,
    principal: Option<String>,
    issuer: Option<String>,
    revoked_at: Option<String>,
    leases_revoked: u32,
    revoked_until: Option<String>,
}

impl LeasesCmd {
    /// Runs the command, printing to `out`.
    ///
    /// # Errors
    /// Client and output errors.
    pub(crate) async fn run(
        &self,
        g: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        let Self::Revoke {
            job,
            principal,
            issuer,
            report,
            sign,
        } = self;
        let target = revoke_target(job.as_deref(), principal.as_deref(), issuer.as_deref())?;
        let client = super::connect(g).await?;
        let r = client.revoke_leases(&target).await?;
        let until = rfc3339(r.revoked_until);
        if report.is_some() {
            let doc = TeardownReport {
                report: "leases-revoke",
                job: job.clone(),
                principal: principal.clone(),
                issuer: issuer.clone(),
                revoked_at: rfc3339(Some(time::OffsetDateTime::now_utc())),
                leases_revoked: r.leases_revoked,
                revoked_until: until.clone(),
            };
            let subject = match (job, principal) {
                (Some(j), _) => format!("job:{j}"),
                (None, p) => format!("principal:{}", p.as_deref().unwrap_or_default()),
            };
            let about = (subject.as_str(), super::signed_report::TEARDOWN_REPORT);
            if let Some(path) = sign.write(&client, &doc, report.as_ref(), about).await? {
                let mut f = std::fs::File::create(path)?;
                write_json(&mut f, &doc)?;
            }
        }
        match format {
            Format::Json => write_json(
                out,
                &RevokeJson {
                    leases_revoked: r.leases_revoked,
                    revoked_until: until,
                },
            )?,
            Format::Text => writeln!(
                out,
                "revoked {} lease(s); further releases denied until {}",
                r.leases_revoked,
                until.unwrap_or_default()
            )?,
        }
        Ok(())
    }
}
