//! `keybroker encrypt|decrypt`: whole files in the KBEF format (docs/file-format.md), one data
//! key per file, streamed with one segment in memory. `-` is stdin/stdout. A file output is
//! written under `OUT.partial` and renamed only on success, so a failed decryption never
//! leaves plaintext under the requested name.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keybroker_client::file::{self, DEFAULT_SEGMENT_SIZE, FileFormatError, Header};
use ring::rand::{SecureRandom, SystemRandom};

use super::GlobalArgs;
use super::args::{pairs_to_map, parse_pair};
use super::error::CliError;

/// `keybroker encrypt IN OUT --key-name K [--context k=v]…`
#[derive(Debug, clap::Args)]
pub(crate) struct EncryptArgs {
    /// Plaintext input, or - for stdin.
    input: PathBuf,
    /// Encrypted output, or - for stdout. (Not `output`: that id is the global format flag.)
    #[arg(value_name = "OUT")]
    dest: PathBuf,
    /// Broker key that wraps the file's data key, e.g. datasets/demo. (`--key` is taken by the
    /// global mTLS private-key flag.)
    #[arg(long = "key-name", short = 'k', value_name = "KEY")]
    key_name: String,
    /// Encryption context pair (repeatable). Stored in clear in the file header.
    #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Ciphertext segment size in bytes (4096..=16777216).
    #[arg(long, default_value_t = DEFAULT_SEGMENT_SIZE)]
    segment_size: u32,
}

/// `keybroker decrypt IN OUT [--context k=v]…`
#[derive(Debug, clap::Args)]
pub(crate) struct DecryptArgs {
    /// Encrypted input, or - for stdin.
    input: PathBuf,
    /// Plaintext output, or - for stdout.
    #[arg(value_name = "OUT")]
    dest: PathBuf,
    /// Expected encryption context (repeatable): when given, it must equal the file's.
    #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
    context: Vec<(String, String)>,
    /// Expected key name: when given, it must equal the file's.
    #[arg(long = "key-name", short = 'k', value_name = "KEY")]
    key_name: Option<String>,
}

impl EncryptArgs {
    /// Gets a data key, then streams IN to OUT.
    ///
    /// # Errors
    /// Usage, client, file format and I/O errors.
    pub(crate) async fn run(&self, g: &GlobalArgs, stdout: &mut dyn Write) -> Result<(), CliError> {
        let context = pairs_to_map("context", &self.context)?;
        let mut input = open_input(&self.input)?;
        let client = super::connect(g).await?;
        let dk = client
            .generate_data_key(&self.key_name, &context, None)
            .await?;
        let rng = SystemRandom::new();
        let (mut salt, mut prefix) = ([0u8; file::SALT_LEN], [0u8; file::NONCE_PREFIX_LEN]);
        rng.fill(&mut salt).map_err(|_| FileFormatError::Random)?;
        rng.fill(&mut prefix).map_err(|_| FileFormatError::Random)?;
        let header = Header::new(
            self.segment_size,
            salt,
            prefix,
            &self.key_name,
            &context,
            &dk.ciphertext,
        )
        .map_err(file_err)?;
        with_output(&self.dest, stdout, |out| {
            file::encrypt_stream(&mut input, out, &header, &dk.plaintext, &mut |_| {})
        })
    }
}

impl DecryptArgs {
    /// Reads the header, asks the broker for the data key, then streams IN to OUT.
    ///
    /// # Errors
    /// Usage, mismatch, client, file format (tampering) and I/O errors.
    pub(crate) async fn run(&self, g: &GlobalArgs, stdout: &mut dyn Write) -> Result<(), CliError> {
        let expected = pairs_to_map("context", &self.context)?;
        let mut input = open_input(&self.input)?;
        let header = file::read_header(&mut input).map_err(file_err)?;
        if self
            .key_name
            .as_ref()
            .is_some_and(|k| *k != header.key_name)
        {
            return Err(CliError::Usage(format!(
                "file is encrypted under key {:?}, not {:?}",
                header.key_name,
                self.key_name.as_deref().unwrap_or_default()
            )));
        }
        if !self.context.is_empty() && expected != header.context {
            return Err(CliError::Usage(
                "the file's encryption context differs from --context".into(),
            ));
        }
        let client = super::connect(g).await?;
        let dk = client
            .decrypt(&header.wrapped_key, &header.context, None)
            .await?;
        if dk.key != header.key_name {
            return Err(CliError::Usage(
                "the broker opened the data key under another key than the header names".into(),
            ));
        }
        let lease_end = dk.expires_at.map(lease_instant);
        let dec = file::Decryptor::new(header, &dk.plaintext, lease_end).map_err(file_err)?;
        with_output(&self.dest, stdout, |out| {
            dec.decrypt_stream(&mut input, out, &mut |_| {})
        })
    }
}

fn lease_instant(at: time::OffsetDateTime) -> Instant {
    let left = at - time::OffsetDateTime::now_utc();
    Instant::now() + Duration::try_from(left).unwrap_or(Duration::ZERO)
}

fn file_err(e: FileFormatError) -> CliError {
    CliError::File(e)
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

fn open_input(p: &Path) -> Result<Box<dyn Read>, CliError> {
    if is_dash(p) {
        return Ok(Box::new(std::io::stdin().lock()));
    }
    let f =
        File::open(p).map_err(|e| CliError::Usage(format!("cannot open {}: {e}", p.display())))?;
    Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
}

/// Runs `body` writing to stdout or to `OUT.partial`, renamed to OUT on success and removed
/// on failure.
fn with_output(
    p: &Path,
    stdout: &mut dyn Write,
    body: impl FnOnce(&mut dyn Write) -> Result<u64, FileFormatError>,
) -> Result<(), CliError> {
    if is_dash(p) {
        return body(stdout).map(drop).map_err(file_err);
    }
    let mut partial = p.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let f = File::options()
        .write(true)
        .create_new(true)
        .open(&partial)
        .map_err(|e| CliError::Usage(format!("cannot create {}: {e}", partial.display())))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let result = body(&mut w).and_then(|_| {
        w.flush()?;
        w.get_ref().sync_all()?;
        Ok(())
    });
    drop(w);
    match result {
        Ok(()) => std::fs::rename(&partial, p).map_err(CliError::Output),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(file_err(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypt_and_decrypt_parse_with_global_flags() -> anyhow::Result<()> {
        use clap::Parser;
        let cli = super::super::Cli::try_parse_from([
            "keybroker",
            "--output",
            "text",
            "encrypt",
            "a",
            "b",
            "--key-name",
            "k",
            "--context",
            "x=y",
        ])?;
        assert!(format!("{cli:?}").contains("dest: \"b\""));
        super::super::Cli::try_parse_from(["keybroker", "decrypt", "-", "-"])?;
        Ok(())
    }

    #[test]
    fn failed_body_leaves_no_output_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("plain.bin");
        let r = with_output(&out, &mut Vec::new(), |w| {
            w.write_all(b"authenticated segment")?;
            Err(FileFormatError::Integrity(1))
        });
        assert!(r.is_err());
        assert!(!out.exists());
        assert!(!dir.path().join("plain.bin.partial").exists());
        Ok(())
    }

    #[test]
    fn successful_body_is_renamed_into_place() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("x");
        with_output(&out, &mut Vec::new(), |w| {
            w.write_all(b"ok")?;
            Ok(2)
        })?;
        assert_eq!(std::fs::read(&out)?, b"ok");
        Ok(())
    }
}
