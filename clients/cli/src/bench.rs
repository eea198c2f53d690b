//! `keybroker bench`: load a broker (or, for comparison, the HSM alone or OpenBao transit)
//! with N operations in flight and report ops/s, latency percentiles from an HDR histogram and
//! errors by code. Runs on its own multi-threaded runtime (`--threads`) so that the load
//! generator is not limited to the CLI's single thread.

mod engine;
mod measure;
mod openbao;
mod raw_hsm;
mod report;
mod target;
mod xks;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use keybroker_client::Client;

use super::GlobalArgs;
use super::args::{pairs_to_map, parse_pair, parse_ttl};
use super::error::CliError;
use super::output::Format;
use engine::{Mix, Plan, Stop};
use keybroker_client::recipient::RecipientKey;
use measure::OpKind;
use raw_hsm::{RawHsm, RawHsmSettings};
use report::{Report, RunShape};
use target::{BrokerTarget, Target};

/// Most operations in flight / connections / runtime threads accepted.
const MAX_CONCURRENCY: usize = 10_000;
const MAX_CONNECTIONS: usize = 256;
const MAX_THREADS: usize = 256;

/// `--op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OpArg {
    /// GenerateDataKey (plaintext, wrapped copy and lease).
    Datakey,
    /// Decrypt of one data-key ciphertext made at start.
    Decrypt,
    /// Encrypt of a 32-byte payload under the SEAL key.
    Encrypt,
    /// Sign of a SHA-256 digest (KEY is a SIGN key; raw-hsm: CKM_ECDSA on a P-256 pair).
    Sign,
    /// Attested release (needs --attestation-state-dir): GetAttestationNonce, a dev result
    /// minted for it, GenerateDataKey with it and HPKE recipient release, opening the key.
    Attested,
    /// GetAttestationNonce alone.
    Nonce,
    /// A weighted mix (`--mix`).
    Mixed,
}

/// `--target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TargetArg {
    /// A keybroker broker (global connection flags).
    Broker,
    /// The PKCS#11 token alone: the broker's HSM calls through cryptoki (the ceiling).
    RawHsm,
    /// OpenBao/Vault transit over HTTP (`--addr`, `--token-file`, `--ca`).
    OpenbaoTransit,
    /// The XKS proxy API, SigV4-signed as AWS KMS calls it (`--xks-env`; KEY is the keyId).
    Xks,
}

/// `keybroker bench` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Key to use: a broker key name, or the transit key name for openbao-transit.
    /// (Positional: `--key` is the global mTLS client key flag.)
    #[arg(value_name = "KEY")]
    key: Option<String>,
    /// What to drive.
    #[arg(long, value_enum, default_value_t = TargetArg::Broker)]
    target: TargetArg,
    /// Shorthand for `--target raw-hsm`.
    #[arg(long, conflicts_with = "target")]
    raw_hsm: bool,
    /// Operation.
    #[arg(long, value_enum, default_value_t = OpArg::Datakey)]
    op: OpArg,
    /// Weights for `--op mixed`, e.g. datakey=70,decrypt=30.
    #[arg(long, value_name = "OP=W,…")]
    mix: Option<String>,
    /// SEAL key for encrypt operations (default: KEY).
    #[arg(long, value_name = "NAME")]
    seal_key: Option<String>,
    /// Operations in flight.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// HTTP/2 connections to the broker the operations are spread over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long to measure, e.g. 10s, 1m (default 10s unless --requests).
    #[arg(long, value_parser = parse_ttl, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Stop after this many operations instead of after a duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Open loop: start operations at this total rate (per second) whatever the latency;
    /// latency counts from each operation's intended start time.
    #[arg(long, value_name = "OPS_PER_SEC")]
    rate: Option<f64>,
    /// Run this long first and discard the figures, e.g. 2s.
    #[arg(long, value_parser = parse_ttl)]
    warmup: Option<Duration>,
    /// Encryption context pair sent with every call (repeatable; default bench=keybroker).
    #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Runtime threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// No progress line on stderr.
    #[arg(long)]
    no_progress: bool,
    /// raw-hsm: PKCS#11 module path.
    #[arg(long, value_name = "PATH")]
    module: Option<PathBuf>,
    /// raw-hsm: token label.
    #[arg(long, value_name = "LABEL")]
    token_label: Option<String>,
    /// raw-hsm: file holding the user PIN.
    #[arg(long, value_name = "FILE")]
    pin_file: Option<PathBuf>,
    /// raw-hsm: existing AES key label (default: a temporary token key, destroyed after).
    #[arg(long, value_name = "LABEL")]
    hsm_key_label: Option<String>,
    /// openbao-transit: server address, e.g. https://127.0.0.1:8200.
    #[arg(long, value_name = "URL")]
    addr: Option<String>,
    /// xks: the `xks.env` of the key store (as `keybrokerd dev` writes it).
    #[arg(long, value_name = "FILE")]
    xks_env: Option<PathBuf>,
    /// attested: the `keybrokerd dev` state dir whose dev attestation verifier mints results.
    #[arg(long, value_name = "DIR")]
    attestation_state_dir: Option<PathBuf>,
}

/// Everything checked before any connection is made.
struct Checked {
    target: TargetArg,
    mix: Mix,
    op_name: String,
    plan: Plan,
    warmup: Option<Duration>,
    context: BTreeMap<String, String>,
}

impl BenchArgs {
    fn check(&self) -> Result<Checked, CliError> {
        let usage = |m: &str| Err(CliError::Usage(m.to_owned()));
        let target = if self.raw_hsm {
            TargetArg::RawHsm
        } else {
            self.target
        };
        let mix = match (self.op, &self.mix) {
            (OpArg::Mixed, Some(m)) => Mix::parse(m).map_err(CliError::Usage)?,
            (OpArg::Mixed, None) => {
                return usage("--op mixed needs --mix, e.g. datakey=70,decrypt=30");
            }
            (_, Some(_)) => return usage("--mix only applies with --op mixed"),
            (OpArg::Datakey, None) => Mix::single(OpKind::Datakey),
            (OpArg::Decrypt, None) => Mix::single(OpKind::Decrypt),
            (OpArg::Encrypt, None) => Mix::single(OpKind::Encrypt),
            (OpArg::Sign, None) => Mix::single(OpKind::Sign),
            (OpArg::Attested, None) => Mix::single(OpKind::Attested),
            (OpArg::Nonce, None) => Mix::single(OpKind::Nonce),
        };
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return usage("--concurrency must be 1..=10000");
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return usage("--connections must be 1..=256");
        }
        if !(1..=MAX_THREADS).contains(&self.threads) {
            return usage("--threads must be 1..=256");
        }
        if let Some(r) = self.rate
            && !(r.is_finite() && r > 0.0 && r <= 10_000_000.0)
        {
            return usage("--rate must be a positive number of operations per second");
        }
        if target != TargetArg::RawHsm && self.key.as_deref().is_none_or(str::is_empty) {
            return usage("KEY is required (the key to generate data keys under)");
        }
        let stop = match (self.duration, self.requests) {
            (_, Some(n)) => Stop::Requests(n),
            (Some(d), None) => Stop::Duration(d),
            (None, None) => Stop::Duration(Duration::from_secs(10)),
        };
        let mut context = pairs_to_map("context", &self.context)?;
        if context.is_empty() {
            context.insert("bench".into(), "keybroker".into());
        }
        let op_name = self
            .op
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned());
        Ok(Checked {
            target,
            mix,
            op_name,
            plan: Plan {
                concurrency: self.concurrency,
                stop,
                rate: self.rate,
                mix: Mix::single(OpKind::Datakey),
                progress: !self.no_progress,
                label: "bench",
            },
            warmup: self.warmup,
            context,
        })
    }

    /// Checks the arguments, runs warmup and measurement on a dedicated runtime, prints the
    /// report.
    ///
    /// # Errors
    /// Usage errors, setup failures (connection, key, token), output errors.
    pub(crate) fn run(
        &self,
        global: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        let mut checked = self.check()?;
        checked.plan.mix = checked.mix.clone();
        // The runtime lives and dies on its own thread: the CLI's runtime must not block in it.
        let report = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(self.threads)
                    .enable_all()
                    .build()
                    .map_err(|e| CliError::Bench(format!("runtime: {e}")))?;
                rt.block_on(self.measure(global, &checked))
            })
            .join()
            .unwrap_or_else(|_| Err(CliError::Bench("load generator thread panicked".into())))
        })?;
        report.print(format, out)?;
        Ok(())
    }

    async fn measure(&self, global: &GlobalArgs, c: &Checked) -> Result<Report, CliError> {
        let (target, connections) = self.connect(global, c).await?;
        let target = Arc::new(target);
        if let Some(w) = c.warmup {
            let plan = Plan {
                stop: Stop::Duration(w),
                label: "warmup",
                ..c.plan.clone()
            };
            engine::run(Arc::clone(&target), &plan)
                .await
                .map_err(|e| CliError::Bench(e.to_string()))?;
        }
        let outcome = engine::run(Arc::clone(&target), &c.plan)
            .await
            .map_err(|e| CliError::Bench(e.to_string()))?;
        if let Target::RawHsm(h) = target.as_ref() {
            h.close().map_err(CliError::Bench)?;
        }
        let mix = if self.op == OpArg::Mixed {
            c.mix.weights()
        } else {
            BTreeMap::new()
        };
        let shape = RunShape {
            target: match c.target {
                TargetArg::Broker => "broker",
                TargetArg::RawHsm => "raw-hsm",
                TargetArg::OpenbaoTransit => "openbao-transit",
                TargetArg::Xks => "xks",
            },
            op: c.op_name.clone(),
            mix,
            concurrency: c.plan.concurrency,
            connections,
            rate: c.plan.rate,
            warmup_s: c.warmup.map_or(0.0, |w| w.as_secs_f64()),
        };
        Ok(Report::new(shape, &outcome))
    }

    /// Sets up the target; returns it with the number of connections it uses.
    async fn connect(&self, global: &GlobalArgs, c: &Checked) -> Result<(Target, usize), CliError> {
        let key = self.key.clone().unwrap_or_default();
        match c.target {
            TargetArg::Broker => {
                let cfg = super::client_config(global)?;
                let mut clients = Vec::with_capacity(self.connections);
                for _ in 0..self.connections {
                    clients.push(Client::connect(cfg.clone()).await?);
                }
                let ciphertext = match clients.first() {
                    Some(first) if c.mix.ops().any(|op| op == OpKind::Decrypt) => {
                        first
                            .generate_data_key_without_plaintext(&key, &c.context)
                            .await?
                            .ciphertext
                    }
                    _ => Vec::new(),
                };
                let seal_key = self.seal_key.clone().unwrap_or_else(|| key.clone());
                let t = BrokerTarget {
                    clients,
                    key,
                    seal_key,
                    context: c.context.clone(),
                    ciphertext,
                    attestation: match &self.attestation_state_dir {
                        Some(dir) => Some((dir.clone(), RecipientKey::generate())),
                        None if c.mix.ops().any(|op| op == OpKind::Attested) => {
                            return Err(CliError::Usage(
                                "--op attested needs --attestation-state-dir".to_owned(),
                            ));
                        }
                        None => None,
                    },
                };
                Ok((Target::Broker(t), self.connections))
            }
            TargetArg::RawHsm => {
                let missing = |flag: &str| CliError::Usage(format!("--raw-hsm needs --{flag}"));
                let settings = RawHsmSettings {
                    module: self.module.clone().ok_or_else(|| missing("module"))?,
                    token_label: self
                        .token_label
                        .clone()
                        .ok_or_else(|| missing("token-label"))?,
                    pin_file: self.pin_file.clone().ok_or_else(|| missing("pin-file"))?,
                    key_label: self.hsm_key_label.clone(),
                };
                let n = self.concurrency;
                let sign = c.mix.ops().any(|op| op == OpKind::Sign);
                let hsm = tokio::task::spawn_blocking(move || RawHsm::open(&settings, n, sign))
                    .await
                    .map_err(|e| CliError::Bench(e.to_string()))?
                    .map_err(CliError::Bench)?;
                Ok((Target::RawHsm(hsm), n))
            }
            TargetArg::OpenbaoTransit => {
                let addr = self.addr.as_deref().ok_or_else(|| {
                    CliError::Usage("--target openbao-transit needs --addr".into())
                })?;
                let token = global.token_file.as_deref().ok_or_else(|| {
                    CliError::Usage("--target openbao-transit needs --token-file".into())
                })?;
                let t = openbao::Transit::connect(
                    addr,
                    &key,
                    token,
                    global.ca.as_deref(),
                    self.concurrency,
                )
                .await
                .map_err(CliError::Bench)?;
                Ok((Target::OpenBao(t), self.concurrency))
            }
            TargetArg::Xks => {
                let env = self
                    .xks_env
                    .as_deref()
                    .ok_or_else(|| CliError::Usage("--target xks needs --xks-env FILE".into()))?;
                let t = xks::XksTarget::connect(env, &key, self.concurrency)
                    .await
                    .map_err(CliError::Bench)?;
                Ok((Target::Xks(t), self.concurrency))
            }
        }
    }
}
