//! `keybroker`, the command line over the `keybroker-client` library: global connection flags
//! (each also read from a `KEYBROKER_*` environment variable), the subcommands, and turning the
//! flags into a [`ClientConfig`] with errors that say which flag or variable is missing. Parses
//! flags (clap exits 2 on usage errors), runs the command, and prints `error: …` to stderr with
//! exit code 1 on failure. Never prints a token except `dev-token`'s own output.

mod args;
mod attest;
mod attestation;
mod audit;
mod bench;
mod datakey;
mod dev_attestation;
mod dev_token;
mod drill;
mod error;
mod files;
mod keys;
mod lifecycle;
mod output;
mod policy;
mod sign;
mod signed_report;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keybroker_client::{Client, ClientConfig};

pub(crate) use error::CliError;
use output::Format;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match cli.run(&mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", error::describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// keybroker: data keys and key administration against a keybroker broker.
#[derive(Debug, Parser)]
#[command(name = "keybroker", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Connection and output flags, valid before or after the subcommand.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct GlobalArgs {
    /// Broker endpoint, e.g. https://127.0.0.1:8443.
    #[arg(long, global = true, env = "KEYBROKER_ENDPOINT", value_name = "URL")]
    endpoint: Option<String>,
    /// File holding the bearer token (re-read when it changes).
    #[arg(long, global = true, env = "KEYBROKER_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// PEM CA certificate(s) of the broker; the only trusted roots.
    #[arg(long, global = true, env = "KEYBROKER_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// PEM client certificate for mTLS.
    #[arg(long, global = true, env = "KEYBROKER_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    // Own id: `key` is also the positional of `datakey generate`, and global args share ids.
    #[arg(
        id = "client_key",
        long = "key",
        global = true,
        env = "KEYBROKER_KEY",
        value_name = "FILE"
    )]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Json)]
    output: Format,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate or decrypt data keys.
    #[command(subcommand)]
    Datakey(datakey::DatakeyCmd),
    /// Create, describe, list, rotate, update, disable, enable and destroy keys.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Revoke leases (job teardown).
    #[command(subcommand)]
    Leases(lifecycle::LeasesCmd),
    /// Revocation and key-compromise drills.
    #[command(subcommand)]
    Drill(drill::DrillCmd),
    /// Audit log: verify offline, tail, prove inclusion, print the verifier key.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Validate Cedar policies offline.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Print a fresh dev-mode token (only for `keybrokerd dev`).
    DevToken(dev_token::DevTokenArgs),
    /// Attested key release: nonces for attestation results.
    #[command(subcommand)]
    Attestation(attestation::AttestationCmd),
    /// Print a dev-mode attestation result (only for `keybrokerd dev`; attests nothing).
    DevAttestation(dev_attestation::DevAttestationArgs),
    /// Encrypt a file (KBEF format, one data key per file; `-` for stdin/stdout).
    Encrypt(files::EncryptArgs),
    /// Decrypt a KBEF file (`-` for stdin/stdout); fails on any tampering.
    Decrypt(files::DecryptArgs),
    /// Load test: ops/s, latency percentiles and errors against a broker (or, for
    /// comparison, the HSM alone or OpenBao transit).
    Bench(Box<bench::BenchArgs>),
    /// Sign a file's SHA-256 with a SIGN key (cosign's format); --bundle adds the log receipt.
    SignBlob(sign::SignBlobArgs),
    /// Verify a sign-blob signature, and with --bundle its inclusion in the audit log, offline.
    VerifyBlob(sign::VerifyBlobArgs),
    /// Sign an in-toto statement about files as a DSSE envelope.
    Attest(attest::AttestArgs),
}

impl Cli {
    /// Runs the parsed command, printing results to `out`.
    ///
    /// # Errors
    /// Missing settings, client and server errors, output errors.
    pub(crate) async fn run(&self, out: &mut dyn Write) -> Result<(), CliError> {
        let format = self.global.output;
        match &self.command {
            Command::DevToken(args) => args.run(out),
            Command::DevAttestation(args) => args.run(out),
            Command::Attestation(cmd) => cmd.run(&self.global, out).await,
            Command::Policy(cmd) => cmd.run(format, out),
            Command::Datakey(cmd) => cmd.run(&self.global, format, out).await,
            Command::Keys(cmd) => cmd.run(&self.global, format, out).await,
            Command::Leases(cmd) => cmd.run(&self.global, format, out).await,
            Command::Drill(cmd) => cmd.run(&self.global, format, out).await,
            Command::Encrypt(args) => args.run(&self.global, out).await,
            Command::Decrypt(args) => args.run(&self.global, out).await,
            Command::Audit(cmd) => cmd.run(&self.global, format, out).await,
            Command::Bench(args) => args.run(&self.global, format, out),
            Command::SignBlob(args) => args.run(&self.global, format, out).await,
            Command::VerifyBlob(args) => args.run(&self.global, format, out).await,
            Command::Attest(args) => args.run(&self.global, format, out).await,
        }
    }
}

/// Connects with the global flags. Commands call this after checking their own arguments,
/// so that a usage mistake is reported without a round trip.
///
/// # Errors
/// As [`client_config`], plus the client's connection errors.
async fn connect(g: &GlobalArgs) -> Result<Client, CliError> {
    Ok(Client::connect(client_config(g)?).await?)
}

/// Turns the global flags into a client configuration.
///
/// # Errors
/// `Missing` naming the flag and variable when the endpoint, the CA (for https) or every
/// credential is absent; `Usage` for `--cert` without `--key` or the reverse.
fn client_config(g: &GlobalArgs) -> Result<ClientConfig, CliError> {
    let set = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
    let endpoint =
        g.endpoint
            .clone()
            .filter(|e| !e.trim().is_empty())
            .ok_or(CliError::Missing {
                what: "endpoint",
                flag: "endpoint",
                env: "KEYBROKER_ENDPOINT",
            })?;
    let (ca, cert, key, token_file) = (set(&g.ca), set(&g.cert), set(&g.key), set(&g.token_file));
    let https = endpoint
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("https://");
    if https && ca.is_none() {
        return Err(CliError::Missing {
            what: "CA certificate",
            flag: "ca",
            env: "KEYBROKER_CA",
        });
    }
    match (&cert, &key) {
        (Some(_), None) => {
            return Err(CliError::Usage(
                "--cert needs --key (or KEYBROKER_KEY)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(CliError::Usage(
                "--key needs --cert (or KEYBROKER_CERT)".into(),
            ));
        }
        _ => {}
    }
    if token_file.is_none() && cert.is_none() {
        return Err(CliError::Missing {
            what: "token file (or --cert/--key for mTLS)",
            flag: "token-file",
            env: "KEYBROKER_TOKEN_FILE",
        });
    }
    Ok(ClientConfig {
        endpoint,
        ca,
        cert,
        key,
        token_file,
        allow_insecure: false,
        retry: keybroker_client::RetryPolicy::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn globals(endpoint: &str) -> GlobalArgs {
        GlobalArgs {
            endpoint: Some(endpoint.into()),
            ca: Some("ca.pem".into()),
            token_file: Some("token".into()),
            ..GlobalArgs::default()
        }
    }

    fn err(g: &GlobalArgs) -> String {
        client_config(g)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_global_flag_reads_its_env_var() {
        let cmd = Cli::command();
        for (id, env) in [
            ("endpoint", "KEYBROKER_ENDPOINT"),
            ("token_file", "KEYBROKER_TOKEN_FILE"),
            ("ca", "KEYBROKER_CA"),
            ("cert", "KEYBROKER_CERT"),
            ("client_key", "KEYBROKER_KEY"),
        ] {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id);
            let got = arg.and_then(|a| a.get_env()).and_then(|e| e.to_str());
            assert_eq!(got, Some(env), "flag {id}");
        }
    }

    #[test]
    fn missing_endpoint_names_flag_env_and_dev_hint() {
        let g = GlobalArgs {
            endpoint: None,
            ..globals("x")
        };
        assert_eq!(
            err(&g),
            "no endpoint: pass --endpoint or set KEYBROKER_ENDPOINT \
             (dev mode: `source <state-dir>/client.env`)"
        );
        let g = GlobalArgs {
            endpoint: Some("  ".into()),
            ..globals("x")
        };
        assert!(err(&g).starts_with("no endpoint"));
    }

    #[test]
    fn https_needs_ca_and_some_credential() {
        let g = GlobalArgs {
            ca: None,
            ..globals("https://b:8443")
        };
        assert!(err(&g).starts_with("no CA certificate: pass --ca or set KEYBROKER_CA"));
        let g = GlobalArgs {
            token_file: None,
            ..globals("https://b:8443")
        };
        assert!(err(&g).contains("--token-file or set KEYBROKER_TOKEN_FILE"));
        let g = GlobalArgs {
            token_file: None,
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            ..globals("https://b:8443")
        };
        assert!(client_config(&g).is_ok());
        let g = GlobalArgs {
            cert: Some("c.pem".into()),
            ..globals("https://b:8443")
        };
        assert_eq!(err(&g), "--cert needs --key (or KEYBROKER_KEY)");
    }

    #[test]
    fn flags_map_to_config() -> anyhow::Result<()> {
        let cli = Cli::try_parse_from([
            "keybroker",
            "datakey",
            "generate",
            "datasets/demo",
            "--endpoint",
            "https://127.0.0.1:8443",
            "--ca",
            "/d/ca.pem",
            "--token-file",
            "/d/token",
            "--context",
            "run=a=b",
            "--ttl",
            "15m",
            "--output",
            "text",
            "--cert",
            "/d/c.pem",
            "--key",
            "/d/k.pem",
        ])?;
        let cfg = client_config(&cli.global)?;
        assert_eq!(cfg.endpoint, "https://127.0.0.1:8443");
        assert_eq!(cfg.ca, Some(PathBuf::from("/d/ca.pem")));
        assert_eq!(cfg.token_file, Some(PathBuf::from("/d/token")));
        assert_eq!(cfg.key, Some(PathBuf::from("/d/k.pem")));
        assert!(!cfg.allow_insecure);
        assert_eq!(cli.global.output, Format::Text);
        Ok(())
    }

    #[test]
    fn attestation_flags_parse() {
        let m = "ab".repeat(48);
        let parse = |base: &[&str], extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            Cli::try_parse_from(args).map(|_| ())
        };
        let dev = [
            "keybroker",
            "dev-attestation",
            "--state-dir",
            "d",
            "--tee",
            "sev-snp",
        ];
        assert!(parse(&dev, &["--measurement", &m, "--nonce", "N"]).is_ok());
        let hidden = ["--no-nonce", "--no-tee", "--iat-offset", "-600"];
        assert!(
            parse(
                &dev,
                &[&["--measurement", m.as_str()][..], &hidden].concat()
            )
            .is_ok()
        );
        assert!(
            parse(&dev, &["--measurement", &m]).is_err(),
            "nonce is required"
        );
        assert!(parse(&dev, &["--measurement", "abc", "--nonce", "N"]).is_err());
        let both = ["--measurement", &m, "--nonce", "N", "--no-nonce"];
        assert!(parse(&dev, &both).is_err());
        let generate = ["keybroker", "datakey", "generate", "models/confidential"];
        let attested = ["--attestation-file", "a", "--recipient-key", "k.pem"];
        assert!(parse(&generate, &attested).is_ok());
        assert!(
            parse(&generate, &["--recipient-key", "k.pem"]).is_err(),
            "a recipient needs an attestation"
        );
        assert!(parse(&["keybroker", "attestation", "nonce"], &[]).is_ok());
    }

    #[test]
    fn bad_context_and_ttl_are_usage_errors() {
        for bad in [
            ["--context", "=v"],
            ["--context", "novalue"],
            ["--ttl", "soon"],
        ] {
            let r = Cli::try_parse_from(
                ["keybroker", "datakey", "generate", "k"]
                    .into_iter()
                    .chain(bad),
            );
            assert!(r.is_err(), "{bad:?} accepted");
        }
    }
}
