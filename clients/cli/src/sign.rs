//! `keybroker sign-blob|verify-blob` and `keys public-key`: signatures over a file's SHA-256
//! with a SIGN key in the broker's HSM, in cosign's format (base64 ASN.1 ECDSA over SHA-256,
//! so `cosign verify-blob --key pub.pem --signature sig FILE` accepts it), and the bundle that
//! adds the transparency receipt (the audit record, its inclusion proof and the checkpoint).
//! `verify-blob` needs the broker only for `--key-name`; with `--public-key` it is offline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keybroker_client::audit::note::VerifierKey;
use keybroker_client::signing::bundle::{BUNDLE_MEDIA_TYPE, Bundle};
use keybroker_client::signing::format::{Algorithm, PublicKey};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::GlobalArgs;
use super::error::CliError;
use super::output::{Format, b64, from_b64, write_json};

/// How long `--bundle` waits for a checkpoint that covers the signature's record.
const RECEIPT_WAIT: Duration = Duration::from_secs(30);

/// `--algorithm` values of `keys create --purpose sign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AlgorithmArg {
    /// ECDSA on NIST P-256 (cosign's default).
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

impl From<AlgorithmArg> for Algorithm {
    fn from(a: AlgorithmArg) -> Self {
        match a {
            AlgorithmArg::EcdsaP256 => Algorithm::EcdsaP256,
            AlgorithmArg::Ed25519 => Algorithm::Ed25519,
        }
    }
}

/// SHA-256 of a file, streamed on a blocking thread (models are large).
pub(crate) async fn file_digest(path: &Path) -> Result<[u8; 32], CliError> {
    let path = path.to_owned();
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || -> std::io::Result<[u8; 32]> {
        let mut hasher = Sha256::new();
        std::io::copy(&mut std::fs::File::open(&path)?, &mut hasher)?;
        Ok(hasher.finalize().into())
    })
    .await
    .map_err(|e| CliError::Usage(format!("{shown}: {e}")))?
    .map_err(|e| CliError::Usage(format!("{shown}: {e}")))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

fn read_text(flag: &str, path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("--{flag} {}: {e}", path.display())))
}

/// `keybroker keys public-key NAME [--key-version N]`
#[derive(Debug, clap::Args)]
pub(crate) struct PublicKeyArgs {
    /// Key name.
    name: String,
    /// Version (default: the newest enabled one).
    #[arg(long = "key-version", default_value_t = 0)]
    key_version: u32,
}

impl PublicKeyArgs {
    pub(crate) async fn run(
        &self,
        global: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        let k = super::connect(global)
            .await?
            .public_key(&self.name, self.key_version)
            .await?;
        match format {
            Format::Text => write!(out, "{}", k.pem)?,
            Format::Json => write_json(
                out,
                &serde_json::json!({
                    "key": k.key, "key_version": k.version, "algorithm": k.algorithm.as_str(),
                    "keyid": k.keyid, "pem": k.pem,
                }),
            )?,
        }
        Ok(())
    }
}

/// `keybroker sign-blob FILE --key-name K [--signature-file F] [--bundle F]`
#[derive(Debug, clap::Args)]
pub(crate) struct SignBlobArgs {
    /// The file to sign (only its SHA-256 leaves this machine).
    file: PathBuf,
    /// SIGN key, e.g. models/release.
    #[arg(long = "key-name", short = 'k', value_name = "KEY")]
    key_name: String,
    /// Artifact name recorded in the audit log and seen by policy (default: FILE as given).
    #[arg(long, value_name = "NAME")]
    artifact_name: Option<String>,
    /// Media type recorded with it.
    #[arg(long, value_name = "TYPE", default_value = "")]
    media_type: String,
    /// Write the base64 signature here (cosign's `--signature` file).
    #[arg(long, value_name = "FILE")]
    signature_file: Option<PathBuf>,
    /// Write a bundle here: signature, public key, key version and the transparency receipt.
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
}

#[derive(Serialize)]
struct SignOut {
    signature: String,
    key: String,
    key_version: u32,
    algorithm: &'static str,
    digest: String,
    audit_index: u64,
}

impl SignBlobArgs {
    pub(crate) async fn run(
        &self,
        global: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        let digest = file_digest(&self.file).await?;
        let client = super::connect(global).await?;
        let name = self
            .artifact_name
            .clone()
            .unwrap_or_else(|| self.file.display().to_string());
        let signed = client
            .sign_digest(&self.key_name, &digest, &name, &self.media_type)
            .await?;
        let signature = b64(&signed.signature).to_string();
        let o = SignOut {
            signature: signature.clone(),
            key: signed.key.clone(),
            key_version: signed.key_version,
            algorithm: signed.algorithm.as_str(),
            digest: format!("sha256:{}", hex::encode(digest)),
            audit_index: signed.audit_index,
        };
        if let Some(path) = &self.signature_file {
            write_file(path, signature.as_bytes())?;
        }
        if let Some(path) = &self.bundle {
            let public = client.public_key(&signed.key, signed.key_version).await?;
            let receipt = client.receipt(signed.audit_index, RECEIPT_WAIT).await?;
            let bundle = Bundle {
                media_type: BUNDLE_MEDIA_TYPE.to_owned(),
                key: signed.key,
                key_version: signed.key_version,
                algorithm: signed.algorithm.as_str().to_owned(),
                public_key: public.pem,
                signature,
                digest: o.digest.clone(),
                receipt,
            };
            let text = serde_json::to_vec_pretty(&bundle)
                .map_err(|e| CliError::Usage(format!("bundle: {e}")))?;
            write_file(path, &text)?;
        }
        match format {
            Format::Json => write_json(out, &o)?,
            Format::Text => writeln!(out, "{}", o.signature)?,
        }
        Ok(())
    }
}

/// `keybroker verify-blob FILE (--signature S | --bundle B) (--key-name K | --public-key PEM)`
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyBlobArgs {
    /// The file the signature is over.
    file: PathBuf,
    /// File holding the signature (base64, as `sign-blob --signature-file` writes it).
    #[arg(long, value_name = "FILE", required_unless_present = "bundle")]
    signature: Option<PathBuf>,
    /// A bundle from `sign-blob --bundle`: also checks that the signature's audit record is
    /// in the log under a signed checkpoint (offline).
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// Fetch the public key of this SIGN key from the broker.
    #[arg(
        long = "key-name",
        short = 'k',
        value_name = "KEY",
        conflicts_with = "public_key"
    )]
    key_name: Option<String>,
    /// Version of --key-name (default: the bundle's, else the newest).
    #[arg(long = "key-version")]
    key_version: Option<u32>,
    /// PEM public key file (offline).
    #[arg(long, value_name = "FILE", required_unless_present = "key_name")]
    public_key: Option<PathBuf>,
    /// The log's verifier key (as `audit vkey` prints it); without it the bundle's own key is
    /// trusted on first use.
    #[arg(long, value_name = "FILE")]
    vkey: Option<PathBuf>,
}

impl VerifyBlobArgs {
    pub(crate) async fn run(
        &self,
        global: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        let bundle: Option<Bundle> = match &self.bundle {
            Some(p) => Some(
                serde_json::from_str(&read_text("bundle", p)?)
                    .map_err(|e| CliError::Usage(format!("--bundle {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let vkey = match &self.vkey {
            Some(p) => {
                Some(VerifierKey::parse(read_text("vkey", p)?.trim()).map_err(CliError::Note)?)
            }
            None => None,
        };
        let pem = match (&self.public_key, &self.key_name) {
            (Some(p), _) => read_text("public-key", p)?,
            (None, Some(name)) => {
                let version = self
                    .key_version
                    .or(bundle.as_ref().map(|b| b.key_version))
                    .unwrap_or(0);
                super::connect(global)
                    .await?
                    .public_key(name, version)
                    .await?
                    .pem
            }
            (None, None) => return Err(CliError::Usage("give --key-name or --public-key".into())),
        };
        let key =
            PublicKey::from_pem(&pem).map_err(|e| CliError::Usage(format!("public key: {e}")))?;
        let digest = file_digest(&self.file).await?;
        let failed =
            |e: &dyn std::fmt::Display| CliError::Usage(format!("verification failed: {e}"));
        let mut o = serde_json::json!({
            "verified": true,
            "digest": format!("sha256:{}", hex::encode(digest)),
            "algorithm": key.algorithm().as_str(),
        });
        if let Some(path) = &self.signature {
            let sig = from_b64(&read_text("signature", path)?)?;
            key.verify_digest(&digest, &sig).map_err(|e| failed(&e))?;
        }
        if let Some(b) = &bundle {
            let record = b
                .verify(&digest, Some(&key), vkey.as_ref())
                .map_err(|e| failed(&e))?;
            o["key"] = b.key.clone().into();
            o["key_version"] = b.key_version.into();
            o["audit_index"] = b.receipt.index.into();
            o["tree_size"] = b.receipt.tree_size.into();
            o["log_verified"] = true.into();
            o["vkey_trusted_on_first_use"] = vkey.is_none().into();
            o["record"] = record;
        }
        match format {
            Format::Json => write_json(out, &o)?,
            Format::Text => writeln!(out, "Verified OK")?,
        }
        Ok(())
    }
}
