//! `keybroker audit vkey|verify|tail|prove|consistency`: the auditor's commands. `verify` is offline (a
//! tiles directory and a verifier key, no broker); the others ask the broker and check what it
//! says locally.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use keybroker_client::audit::note::{VerifierKey, verify_checkpoint};
use keybroker_client::audit::proof::{verify_consistency, verify_inclusion};
use keybroker_client::audit::rollback::{check_old_checkpoint, entries_beyond};
use keybroker_client::audit::tiles::verify_dir;
use serde::Serialize;

use super::GlobalArgs;
use super::error::CliError;
use super::output::{Format, write_json};

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Print the broker's checkpoint verifier key (C2SP vkey), after checking that the newest
    /// checkpoint verifies with it. Compare it with the one published out of band.
    Vkey,
    /// Verify a tiles directory offline: the checkpoint signature, every record, every tile,
    /// the root. Exits non-zero naming the first bad record or tile. With --old-checkpoint,
    /// also that the log only grew since each checkpoint you kept (no rollback, no rewrite).
    Verify {
        /// The audit directory (holding `checkpoint` and `tile/`).
        dir: PathBuf,
        /// File holding the verifier key (`<name>+<id>+<key>`, as `audit vkey` prints it).
        #[arg(long, value_name = "FILE")]
        vkey: PathBuf,
        /// A checkpoint saved earlier (a copy of `<audit dir>/checkpoint`); repeatable. Each
        /// must verify with the key, be no larger than the directory's checkpoint, and its
        /// root must be the root of the directory's first N records.
        #[arg(long, value_name = "FILE")]
        old_checkpoint: Vec<PathBuf>,
    },
    /// Print audit records as JSON lines, from an index; with --follow, keep printing new ones.
    Tail {
        /// First index to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Keep the stream open and print records as they are published.
        #[arg(long)]
        follow: bool,
    },
    /// Prove that record N is in the log: fetch it and an inclusion proof against the newest
    /// checkpoint, and check both here.
    Prove {
        /// The record's index.
        #[arg(long)]
        index: u64,
        /// Verifier key file; without it, the broker's own key is used (trust on first use).
        #[arg(long, value_name = "FILE")]
        vkey: Option<PathBuf>,
    },
    /// Prove the log was only appended to since a checkpoint you kept: fetch the newest
    /// checkpoint and a consistency proof from the old one, and check both here.
    Consistency {
        /// A checkpoint saved earlier (a copy of `<audit dir>/checkpoint`).
        #[arg(long, value_name = "FILE")]
        old_checkpoint: PathBuf,
        /// Verifier key file.
        #[arg(long, value_name = "FILE")]
        vkey: PathBuf,
    },
}

/// Reads a verifier key file: the vkey line, or `audit vkey`'s JSON output.
fn read_vkey(path: &Path) -> Result<VerifierKey, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("--vkey {}: {e}", path.display())))?;
    let line = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("vkey").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or(text);
    VerifierKey::parse(&line)
        .map_err(|e| CliError::Usage(format!("--vkey {}: {e}", path.display())))
}

#[derive(Serialize)]
struct VerifyOut {
    verified: bool,
    origin: String,
    tree_size: u64,
    root: String,
    tiles: u64,
    /// Sizes of the `--old-checkpoint`s, each a verified prefix of this log.
    old_checkpoint_sizes: Vec<u64>,
    /// Entry bundles beyond the checkpoint (no signature covers them).
    entries_beyond_checkpoint: bool,
}

#[derive(Serialize)]
struct ProveOut {
    verified: bool,
    index: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof_hashes: usize,
    record: serde_json::Value,
}

impl AuditCmd {
    /// Runs the command, printing to `out`.
    ///
    /// # Errors
    /// Usage and verification failures, client errors, output errors.
    pub(crate) async fn run(
        &self,
        global: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        match self {
            Self::Verify {
                dir,
                vkey,
                old_checkpoint,
            } => {
                let vkey = read_vkey(vkey)?;
                let v = verify_dir(dir, &vkey).map_err(CliError::Audit)?;
                let mut old_sizes = Vec::with_capacity(old_checkpoint.len());
                for old in old_checkpoint {
                    let cp = check_old_checkpoint(dir, &v.checkpoint, old, &vkey)
                        .map_err(CliError::Rollback)?;
                    old_sizes.push(cp.size);
                }
                let beyond = entries_beyond(dir, v.checkpoint.size);
                if beyond {
                    eprintln!(
                        "warning: {} holds entry bundles beyond its checkpoint's {} records: \
                         no signature covers them (an older checkpoint put back, or a newer one \
                         not published yet); verify with --old-checkpoint FILE",
                        dir.display(),
                        v.checkpoint.size
                    );
                }
                let o = VerifyOut {
                    verified: true,
                    origin: v.checkpoint.origin,
                    tree_size: v.checkpoint.size,
                    root: hex::encode(v.checkpoint.root),
                    tiles: v.tiles,
                    old_checkpoint_sizes: old_sizes,
                    entries_beyond_checkpoint: beyond,
                };
                match format {
                    Format::Json => write_json(out, &o)?,
                    Format::Text => {
                        writeln!(
                            out,
                            "verified: {} records of {} (root {}, {} tiles)",
                            o.tree_size, o.origin, o.root, o.tiles
                        )?;
                        for size in &o.old_checkpoint_sizes {
                            writeln!(
                                out,
                                "consistent: the old checkpoint's {size} records are the first {size} of this log"
                            )?;
                        }
                    }
                }
                Ok(())
            }
            Self::Vkey => {
                let client = super::connect(global).await?;
                let cp = client.audit_checkpoint().await?;
                let vkey = VerifierKey::parse(&cp.vkey).map_err(CliError::Note)?;
                verify_checkpoint(&vkey, &cp.note).map_err(CliError::Note)?;
                match format {
                    Format::Json => write_json(out, &serde_json::json!({ "vkey": cp.vkey }))?,
                    Format::Text => writeln!(out, "{}", cp.vkey)?,
                }
                Ok(())
            }
            Self::Tail { from, follow } => {
                let client = super::connect(global).await?;
                let mut stream = client.watch_audit(*from, *follow).await?;
                while let Some(entry) = stream.next().await? {
                    out.write_all(&entry.record)?;
                    out.write_all(b"\n")?;
                    out.flush()?;
                }
                Ok(())
            }
            Self::Prove { index, vkey } => {
                let vkey = vkey.as_deref().map(read_vkey).transpose()?;
                let client = super::connect(global).await?;
                let o = prove(&client, *index, vkey).await?;
                match format {
                    Format::Json => write_json(out, &o)?,
                    Format::Text => writeln!(
                        out,
                        "record {} is in the log of {} records (root {}): verified",
                        o.index, o.tree_size, o.root
                    )?,
                }
                Ok(())
            }
            Self::Consistency {
                old_checkpoint,
                vkey,
            } => {
                let vkey = read_vkey(vkey)?;
                let text = std::fs::read_to_string(old_checkpoint).map_err(|e| {
                    CliError::Usage(format!(
                        "--old-checkpoint {}: {e}",
                        old_checkpoint.display()
                    ))
                })?;
                let old = verify_checkpoint(&vkey, &text).map_err(CliError::Note)?;
                let client = super::connect(global).await?;
                let new = client.audit_checkpoint().await?;
                let new = verify_checkpoint(&vkey, &new.note).map_err(CliError::Note)?;
                if new.size < old.size {
                    return Err(CliError::Usage(format!(
                        "the newest checkpoint ({} records) is older than the saved one ({})",
                        new.size, old.size
                    )));
                }
                let proof = if old.size == 0 {
                    Vec::new()
                } else {
                    client.audit_consistency_proof(old.size, new.size).await?
                };
                if old.size > 0 {
                    verify_consistency(old.size, new.size, &old.root, &new.root, &proof)
                        .map_err(CliError::Proof)?;
                }
                let o = serde_json::json!({
                    "verified": true,
                    "old_size": old.size,
                    "new_size": new.size,
                    "new_root": hex::encode(new.root),
                });
                match format {
                    Format::Json => write_json(out, &o)?,
                    Format::Text => writeln!(
                        out,
                        "the log of {} records extends the saved one of {}: verified",
                        new.size, old.size
                    )?,
                }
                Ok(())
            }
        }
    }
}

async fn prove(
    client: &keybroker_client::Client,
    index: u64,
    vkey: Option<VerifierKey>,
) -> Result<ProveOut, CliError> {
    let cp = client.audit_checkpoint().await?;
    let vkey = match vkey {
        Some(k) => k,
        None => VerifierKey::parse(&cp.vkey).map_err(CliError::Note)?,
    };
    let checkpoint = verify_checkpoint(&vkey, &cp.note).map_err(CliError::Note)?;
    if index >= checkpoint.size {
        return Err(CliError::Usage(format!(
            "record {index} is not covered by the newest checkpoint ({} records); \
             checkpoints follow within a second, retry",
            checkpoint.size
        )));
    }
    let mut stream = client.watch_audit(index, false).await?;
    let entry = stream
        .next()
        .await?
        .ok_or_else(|| CliError::Usage(format!("the broker sent no record {index}")))?;
    drop(stream);
    let proof = client.audit_inclusion_proof(index, checkpoint.size).await?;
    verify_inclusion(
        index,
        checkpoint.size,
        &entry.leaf_hash,
        &proof,
        &checkpoint.root,
    )
    .map_err(CliError::Proof)?;
    let record = serde_json::from_slice(&entry.record)
        .map_err(|_| CliError::Usage(format!("record {index} is not JSON")))?;
    Ok(ProveOut {
        verified: true,
        index,
        tree_size: checkpoint.size,
        root: hex::encode(checkpoint.root),
        leaf_hash: hex::encode(entry.leaf_hash),
        proof_hashes: proof.len(),
        record,
    })
}
