//! `keybroker encrypt|decrypt`: whole files in the KBEF format (docs/file-format.md), one data
//! key per file (through the library's lease-aware `DataKeyCache`, the path jobs use),
//! streamed with one segment in memory. `-` is stdin/stdout. A file output is written under
//! `OUT.partial` and renamed only on success, so a failed decryption never leaves plaintext
//! under the requested name. A progress bar goes to stderr for file inputs of 64 MiB or more
//! when stderr is a terminal, or always with `--progress` (then a plain line a second when
//! stderr is not a terminal); never for stdin, whose size is unknown.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal as _, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use keybroker_client::DataKeyCache;
use keybroker_client::file::{self, DEFAULT_SEGMENT_SIZE, FileFormatError, TAG_LEN};

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
    /// Show a progress bar on stderr even when it is not a terminal or the file is small.
    #[arg(long)]
    progress: bool,
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
    /// Show a progress bar on stderr even when it is not a terminal or the file is small.
    #[arg(long)]
    progress: bool,
}

impl EncryptArgs {
    /// Gets a data key, then streams IN to OUT.
    ///
    /// # Errors
    /// Usage, client, file format and I/O errors.
    pub(crate) async fn run(&self, g: &GlobalArgs, stdout: &mut dyn Write) -> Result<(), CliError> {
        let context = pairs_to_map("context", &self.context)?;
        let (mut input, size) = open_input(&self.input)?;
        let cache = DataKeyCache::new(super::connect(g).await?);
        let (header, dk) = cache
            .new_file(&self.key_name, &context, self.segment_size)
            .await?;
        let mut progress = Progress::new(size, self.progress);
        let result = with_output(&self.dest, stdout, |out| {
            file::encrypt_stream(&mut input, out, &header, dk.plaintext(), &mut |n| {
                progress.update(n);
            })
        });
        progress.finish();
        result
    }
}

impl DecryptArgs {
    /// Reads the header, asks the broker for the data key, then streams IN to OUT.
    ///
    /// # Errors
    /// Usage, mismatch, client, file format (tampering) and I/O errors.
    pub(crate) async fn run(&self, g: &GlobalArgs, stdout: &mut dyn Write) -> Result<(), CliError> {
        let expected = pairs_to_map("context", &self.context)?;
        let (mut input, size) = open_input(&self.input)?;
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
        let cache = DataKeyCache::new(super::connect(g).await?);
        let dk = cache.file_key(&header).await?;
        let lease_end = Some(cache.lease_end(&dk));
        let plain = size.map(|s| plaintext_len(s, header.as_bytes().len(), header.segment_size));
        let dec = file::Decryptor::new(header, dk.plaintext(), lease_end).map_err(file_err)?;
        let mut progress = Progress::new(plain, self.progress);
        let result = with_output(&self.dest, stdout, |out| {
            dec.decrypt_stream(&mut input, out, &mut |n| progress.update(n))
        });
        progress.finish();
        result
    }
}

/// Inputs at least this large get a progress bar on a terminal without `--progress`.
const PROGRESS_THRESHOLD: u64 = 64 << 20;

/// Progress on stderr: an indicatif bar on a terminal, one plain line a second when forced
/// into a log or pipe, or nothing.
enum Progress {
    Hidden,
    Bar(ProgressBar),
    Lines {
        total: u64,
        start: Instant,
        last: Instant,
    },
}

impl Progress {
    /// `total` plaintext bytes; no size (stdin) means no progress, and without `forced` only a
    /// terminal with a large input gets one.
    fn new(total: Option<u64>, forced: bool) -> Self {
        let Some(total) = total else {
            return Self::Hidden;
        };
        let tty = std::io::stderr().is_terminal();
        if !(forced || (tty && total >= PROGRESS_THRESHOLD)) {
            return Self::Hidden;
        }
        if !tty {
            let now = Instant::now();
            return Self::Lines {
                total,
                start: now,
                last: now,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        Self::Bar(bar)
    }

    #[cfg(test)]
    fn is_hidden(&self) -> bool {
        matches!(self, Self::Hidden)
    }

    fn update(&mut self, done: u64) {
        match self {
            Self::Hidden => {}
            Self::Bar(bar) => bar.set_position(done),
            Self::Lines { total, start, last } => {
                if last.elapsed() >= Duration::from_secs(1) || done == *total {
                    *last = Instant::now();
                    let secs = start.elapsed().as_secs_f64().max(1e-9);
                    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
                    let _ = writeln!(
                        std::io::stderr(),
                        "{:.0}/{:.0} MiB ({:.0} MiB/s)",
                        mib(done),
                        mib(*total),
                        mib(done) / secs
                    );
                }
            }
        }
    }

    fn finish(self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Plaintext length of a KBEF file of `file_len` bytes (header `header_len`, segments of
/// `segment_size`); an estimate for the progress bar only (a malformed file fails anyway).
fn plaintext_len(file_len: u64, header_len: usize, segment_size: u32) -> u64 {
    let body = file_len.saturating_sub(header_len as u64);
    let segments = body.div_ceil(u64::from(segment_size)).max(1);
    body.saturating_sub(segments * TAG_LEN as u64)
}

fn file_err(e: FileFormatError) -> CliError {
    CliError::File(e)
}

fn is_dash(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// The input and, for a regular file, its size.
fn open_input(p: &Path) -> Result<(Box<dyn Read>, Option<u64>), CliError> {
    if is_dash(p) {
        return Ok((Box::new(std::io::stdin().lock()), None));
    }
    let f =
        File::open(p).map_err(|e| CliError::Usage(format!("cannot open {}: {e}", p.display())))?;
    let size = f
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len());
    Ok((Box::new(BufReader::with_capacity(1 << 20, f)), size))
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
    fn progress_total_is_the_plaintext_length() {
        // 2 full segments of 4096 (4080 plaintext each) + a last one of 100 + 16.
        assert_eq!(plaintext_len(60 + 2 * 4096 + 116, 60, 4096), 2 * 4080 + 100);
        assert_eq!(plaintext_len(60 + 16, 60, 4096), 0);
        assert_eq!(plaintext_len(10, 60, 4096), 0);
    }

    #[test]
    fn no_progress_bar_without_a_size_even_when_forced() {
        assert!(Progress::new(None, true).is_hidden());
        assert!(!Progress::new(Some(1), true).is_hidden());
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
