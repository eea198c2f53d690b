//! `keybroker keys create|get|list|rotate|update|disable|enable|destroy|cancel-destroy`: key
//! administration (the lifecycle commands are in `lifecycle.rs`), printing each key as JSON
//! (`name, purpose, state, labels, hsm_id, jurisdiction, region, primary_version,
//! min_decryption_version, versions, created_at, rotation_period_seconds`) or as text.

use std::collections::BTreeMap;
use std::io::Write;

use clap::{Subcommand, ValueEnum};
use keybroker_client::{KeyInfo, KeyPurpose};
use serde::Serialize;

use super::GlobalArgs;
use super::args::{pairs_to_map, parse_pair};
use super::error::CliError;
use super::output::{Format, rfc3339, write_json};

/// `--purpose` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PurposeArg {
    /// Envelope encryption with data keys.
    DataKey,
    /// Encrypt/decrypt of small secrets (e.g. an OpenBao seal key).
    Seal,
    /// An AWS KMS external key on the XKS proxy API (name without '/'; usage from the
    /// `xks-usage` label: encrypt,decrypt (default), encrypt, decrypt or none).
    Xks,
    /// Signatures (sign-blob, attest); see --algorithm.
    Sign,
}

impl From<PurposeArg> for KeyPurpose {
    fn from(p: PurposeArg) -> Self {
        match p {
            PurposeArg::DataKey => KeyPurpose::DataKey,
            PurposeArg::Seal => KeyPurpose::Seal,
            PurposeArg::Xks => KeyPurpose::Xks,
            PurposeArg::Sign => KeyPurpose::Sign,
        }
    }
}

/// `keys` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum KeysCmd {
    /// Create a key (and its version 1 in an HSM).
    Create {
        /// Key name: lowercase letters, digits and . _ / - (at most 128), e.g. datasets/imagenet-eu.
        name: String,
        /// What the key is for.
        #[arg(long, value_enum, default_value_t = PurposeArg::DataKey)]
        purpose: PurposeArg,
        /// Label pair (repeatable), e.g. classification=internal.
        #[arg(long = "label", value_name = "K=V", value_parser = parse_pair)]
        labels: Vec<(String, String)>,
        /// HSM inventory id (default: the first HSM whose jurisdiction is allowed).
        #[arg(long = "hsm", value_name = "ID")]
        hsm: Option<String>,
        /// Signature algorithm of a `--purpose sign` key (default ecdsa-p256).
        #[arg(long, value_enum)]
        algorithm: Option<super::sign::AlgorithmArg>,
    },
    /// Print the public key of a SIGN key (PEM with --output text).
    PublicKey(super::sign::PublicKeyArgs),
    /// Describe a key.
    Get {
        /// Key name.
        name: String,
    },
    /// List keys (all pages).
    List {
        /// Only keys whose name starts with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Add a new version to a key; new encryptions use it.
    Rotate {
        /// Key name.
        name: String,
    },
    /// Change min_decryption_version and/or the automatic rotation period.
    Update(super::lifecycle::UpdateArgs),
    /// Disable a key (or one version with --key-version): every use is denied from the next request.
    Disable(super::lifecycle::StateArgs),
    /// Enable a disabled key (or one version with --key-version).
    Enable(super::lifecycle::StateArgs),
    /// Schedule the destruction of every version's HSM object after a waiting period.
    Destroy(super::lifecycle::DestroyArgs),
    /// Cancel a scheduled destruction (the key stays disabled; enable it to use it again).
    CancelDestroy {
        /// Key name.
        name: String,
    },
}

impl KeysCmd {
    /// Checks the arguments, connects with `global`, runs the command, prints to `out`.
    ///
    /// # Errors
    /// Duplicate labels, client errors, output errors.
    pub(crate) async fn run(
        &self,
        global: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        match self {
            Self::Create {
                name,
                purpose,
                labels,
                hsm,
                algorithm,
            } => {
                let labels = pairs_to_map("label", labels)?;
                if algorithm.is_some() && *purpose != PurposeArg::Sign {
                    return Err(CliError::Usage("--algorithm is for --purpose sign".into()));
                }
                let client = super::connect(global).await?;
                let key = match algorithm {
                    Some(alg) => {
                        let alg = (*alg).into();
                        client
                            .create_signing_key(name, alg, &labels, hsm.as_deref())
                            .await?
                    }
                    None => {
                        client
                            .create_key(name, (*purpose).into(), &labels, hsm.as_deref())
                            .await?
                    }
                };
                print_key(&key, format, out)?;
            }
            Self::PublicKey(a) => a.run(global, format, out).await?,
            Self::Get { name } => {
                let key = super::connect(global).await?.get_key(name).await?;
                print_key(&key, format, out)?;
            }
            Self::Rotate { name } => {
                let key = super::connect(global).await?.rotate_key(name).await?;
                print_key(&key, format, out)?;
            }
            Self::Update(a) => print_key(&a.run(global).await?, format, out)?,
            Self::Disable(a) => print_key(&a.run(global, false).await?, format, out)?,
            Self::Enable(a) => print_key(&a.run(global, true).await?, format, out)?,
            Self::Destroy(a) => print_key(&a.run(global).await?, format, out)?,
            Self::CancelDestroy { name } => {
                let key = super::connect(global)
                    .await?
                    .cancel_key_destruction(name)
                    .await?;
                print_key(&key, format, out)?;
            }
            Self::List { prefix } => {
                let keys = super::connect(global).await?.list_all_keys(prefix).await?;
                print_keys(&keys, format, out)?;
            }
        }
        Ok(())
    }
}

/// JSON shape of one key version.
#[derive(Serialize)]
struct VersionJson {
    version: u32,
    state: &'static str,
    created_at: Option<String>,
}

/// JSON shape of a key.
#[derive(Serialize)]
struct KeyJson<'a> {
    name: &'a str,
    purpose: &'static str,
    state: &'static str,
    labels: &'a BTreeMap<String, String>,
    hsm_id: &'a str,
    jurisdiction: &'a str,
    region: &'a str,
    primary_version: u32,
    min_decryption_version: u32,
    versions: Vec<VersionJson>,
    created_at: Option<String>,
    rotation_period_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_rotation_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destruction_time: Option<String>,
}

impl<'a> From<&'a KeyInfo> for KeyJson<'a> {
    fn from(k: &'a KeyInfo) -> Self {
        Self {
            name: &k.name,
            purpose: k.purpose.as_str(),
            state: k.state.as_str(),
            labels: &k.labels,
            hsm_id: &k.hsm_id,
            jurisdiction: &k.jurisdiction,
            region: &k.region,
            primary_version: k.primary_version,
            min_decryption_version: k.min_decryption_version,
            versions: k
                .versions
                .iter()
                .map(|v| VersionJson {
                    version: v.version,
                    state: v.state.as_str(),
                    created_at: rfc3339(v.created_at),
                })
                .collect(),
            created_at: rfc3339(k.created_at),
            rotation_period_seconds: k.rotation_period.map(|d| d.as_secs()),
            next_rotation_time: rfc3339(k.next_rotation_time),
            destruction_time: rfc3339(k.destruction_time),
        }
    }
}

/// JSON shape of `keys list`.
#[derive(Serialize)]
struct KeyListJson<'a> {
    keys: Vec<KeyJson<'a>>,
}

/// Prints one key.
///
/// # Errors
/// I/O errors of `out`.
pub(crate) fn print_key(key: &KeyInfo, format: Format, out: &mut dyn Write) -> std::io::Result<()> {
    match format {
        Format::Json => write_json(out, &KeyJson::from(key)),
        Format::Text => {
            let labels: Vec<String> = key.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(out, "name:             {}", key.name)?;
            writeln!(out, "purpose:          {}", key.purpose.as_str())?;
            writeln!(out, "state:            {}", key.state.as_str())?;
            writeln!(
                out,
                "hsm:              {} (jurisdiction {}, region {})",
                key.hsm_id, key.jurisdiction, key.region
            )?;
            writeln!(out, "labels:           {}", labels.join(", "))?;
            writeln!(out, "primary version:  {}", key.primary_version)?;
            writeln!(out, "min decrypt ver.: {}", key.min_decryption_version)?;
            if let Some(p) = key.rotation_period {
                writeln!(out, "rotation period:  {}s", p.as_secs())?;
            }
            if let Some(t) = rfc3339(key.next_rotation_time) {
                writeln!(out, "next rotation:    {t}")?;
            }
            if let Some(t) = rfc3339(key.destruction_time) {
                writeln!(out, "destroyed at:     {t}")?;
            }
            writeln!(
                out,
                "created at:       {}",
                rfc3339(key.created_at).unwrap_or_default()
            )?;
            writeln!(out, "versions:")?;
            for v in &key.versions {
                let created = rfc3339(v.created_at).unwrap_or_default();
                writeln!(
                    out,
                    "  v{:<5} {:<20} {created}",
                    v.version,
                    v.state.as_str()
                )?;
            }
            Ok(())
        }
    }
}

/// Prints a list of keys: JSON `{"keys": [...]}`, or one line per key.
///
/// # Errors
/// I/O errors of `out`.
pub(crate) fn print_keys(
    keys: &[KeyInfo],
    format: Format,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match format {
        Format::Json => write_json(
            out,
            &KeyListJson {
                keys: keys.iter().map(KeyJson::from).collect(),
            },
        ),
        Format::Text => {
            for k in keys {
                writeln!(
                    out,
                    "{}\t{}\t{}\tv{}\t{}",
                    k.name,
                    k.purpose.as_str(),
                    k.state.as_str(),
                    k.primary_version,
                    k.hsm_id
                )?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybroker_client::{KeyState, KeyVersionInfo};
    use time::OffsetDateTime;

    fn key() -> KeyInfo {
        KeyInfo {
            name: "datasets/demo".into(),
            purpose: KeyPurpose::DataKey,
            state: KeyState::Enabled,
            labels: BTreeMap::from([("stage".to_owned(), "dev".to_owned())]),
            hsm_id: "softhsm-0".into(),
            jurisdiction: "EU".into(),
            region: "eu-west-1".into(),
            primary_version: 2,
            min_decryption_version: 1,
            versions: vec![KeyVersionInfo {
                version: 1,
                state: KeyState::Enabled,
                created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).ok(),
            }],
            created_at: None,
            rotation_period: None,
            next_rotation_time: None,
            destruction_time: None,
        }
    }

    #[test]
    fn key_json_shape() -> anyhow::Result<()> {
        let mut buf = Vec::new();
        print_key(&key(), Format::Json, &mut buf)?;
        let v: serde_json::Value = serde_json::from_slice(&buf)?;
        assert_eq!(
            v,
            serde_json::json!({
                "name": "datasets/demo",
                "purpose": "DATA_KEY",
                "state": "ENABLED",
                "labels": {"stage": "dev"},
                "hsm_id": "softhsm-0",
                "jurisdiction": "EU",
                "region": "eu-west-1",
                "primary_version": 2,
                "min_decryption_version": 1,
                "versions": [{"version": 1, "state": "ENABLED", "created_at": "2023-11-14T22:13:20Z"}],
                "created_at": null,
                "rotation_period_seconds": null,
            })
        );
        Ok(())
    }

    #[test]
    fn key_list_json_and_text() -> anyhow::Result<()> {
        let mut buf = Vec::new();
        print_keys(&[key(), key()], Format::Json, &mut buf)?;
        let v: serde_json::Value = serde_json::from_slice(&buf)?;
        assert_eq!(v["keys"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["keys"][0]["name"], "datasets/demo");
        let mut buf = Vec::new();
        print_keys(&[key()], Format::Text, &mut buf)?;
        assert_eq!(
            String::from_utf8(buf)?,
            "datasets/demo\tDATA_KEY\tENABLED\tv2\tsofthsm-0\n"
        );
        Ok(())
    }
}
