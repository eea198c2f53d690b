//! `keybroker datakey generate|decrypt`: a data key with its lease, printed as JSON
//! (`plaintext`/`ciphertext` in standard base64, `expires_at` in RFC 3339) or as text.
//!
//! With `--attestation-file F` the call carries that attestation result; with
//! `--recipient-key PEM` too, the key is released sealed to the PEM's X25519 key. A private key
//! opens it and the output is as without; a public key alone prints `ciphertext_for_recipient`
//! (standard base64) instead of `plaintext`.

use std::io::Write;
use std::time::Duration;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use keybroker_client::{Attested, DataKey, DecryptedKey, RecipientKey};
use serde::Serialize;
use zeroize::Zeroizing;

use super::GlobalArgs;
use super::args::{pairs_to_map, parse_pair, parse_ttl};
use super::error::CliError;
use super::output::{Format, b64, from_b64, rfc3339, write_json};

/// `datakey` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DatakeyCmd {
    /// Generate a data key under KEY: prints the plaintext key (under a lease) and its
    /// ciphertext to store with the data.
    Generate {
        /// Key name, e.g. datasets/imagenet-eu.
        key: String,
        /// Encryption context pair (repeatable). Logged in clear: never put secrets here.
        #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        /// Requested lease, e.g. 15m, 1h (capped by the broker; default 15m).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        #[command(flatten)]
        attested: AttestedArgs,
    },
    /// Decrypt a data key ciphertext (standard base64) given the same encryption context.
    Decrypt {
        /// The ciphertext, standard base64.
        #[arg(value_name = "CIPHERTEXT_B64")]
        ciphertext: String,
        /// Encryption context pair (repeatable); must equal the one used to generate.
        #[arg(long = "context", value_name = "K=V", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        /// Requested lease, e.g. 15m, 1h (capped by the broker; default 15m).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        #[command(flatten)]
        attested: AttestedArgs,
    },
}

/// Attested release flags of `datakey generate|decrypt`.
#[derive(Debug, Default, Args)]
pub(crate) struct AttestedArgs {
    /// File holding an attestation result (from the TEE's verifier, or `keybroker
    /// dev-attestation`) whose nonce came from `keybroker attestation nonce`. One call each.
    #[arg(long, value_name = "FILE")]
    attestation_file: Option<PathBuf>,
    /// X25519 key PEM the result binds: release the key sealed to it (HPKE). A private key
    /// (PKCS#8, mode 0600) opens it here; a public key alone prints the sealed key.
    #[arg(long, value_name = "PEM", requires = "attestation_file")]
    recipient_key: Option<PathBuf>,
}

impl AttestedArgs {
    /// Reads the files: `None` without `--attestation-file`.
    fn load(&self) -> Result<Option<Attested>, CliError> {
        let Some(path) = &self.attestation_file else {
            return Ok(None);
        };
        let recipient = self
            .recipient_key
            .as_deref()
            .map(RecipientKey::read_pem_file)
            .transpose()?;
        Ok(Some(Attested {
            token: read_token(path)?,
            recipient,
        }))
    }
}

/// The attestation result in `path`, without surrounding whitespace.
fn read_token(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "cannot read attestation file {}: {e}",
            path.display()
        ))
    })?);
    let token = Zeroizing::new(text.trim().to_owned());
    if token.is_empty() {
        return Err(CliError::Usage(format!(
            "attestation file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

impl DatakeyCmd {
    /// Checks the arguments, connects with `global`, runs the command, prints to `out`.
    ///
    /// # Errors
    /// Duplicate context keys, bad base64, client errors, output errors.
    pub(crate) async fn run(
        &self,
        global: &GlobalArgs,
        format: Format,
        out: &mut dyn Write,
    ) -> Result<(), CliError> {
        match self {
            Self::Generate {
                key,
                context,
                ttl,
                attested,
            } => {
                let context = pairs_to_map("context", context)?;
                let attested = attested.load()?;
                let client = super::connect(global).await?;
                match attested {
                    None => {
                        let dk = client.generate_data_key(key, &context, *ttl).await?;
                        print_generated(&dk, None, format, out)?;
                    }
                    Some(a) => {
                        let r = client
                            .generate_data_key_attested(key, &context, *ttl, &a)
                            .await?;
                        print_generated(
                            &r.key,
                            sealed_only(&a, &r.ciphertext_for_recipient),
                            format,
                            out,
                        )?;
                    }
                }
            }
            Self::Decrypt {
                ciphertext,
                context,
                ttl,
                attested,
            } => {
                let context = pairs_to_map("context", context)?;
                let ciphertext = from_b64(ciphertext)?;
                let attested = attested.load()?;
                let client = super::connect(global).await?;
                match attested {
                    None => {
                        let dk = client.decrypt(&ciphertext, &context, *ttl).await?;
                        print_decrypted(&dk, None, format, out)?;
                    }
                    Some(a) => {
                        let r = client
                            .decrypt_attested(&ciphertext, &context, *ttl, &a)
                            .await?;
                        print_decrypted(
                            &r.key,
                            sealed_only(&a, &r.ciphertext_for_recipient),
                            format,
                            out,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The sealed key to print instead of the plaintext: only when it was not opened here (a
/// public recipient key alone).
fn sealed_only<'a>(a: &Attested, sealed: &'a Option<Vec<u8>>) -> Option<&'a [u8]> {
    match a.recipient {
        Some(RecipientKey::Public(_)) => sealed.as_deref(),
        _ => None,
    }
}

/// `plaintext`, or `ciphertext_for_recipient` when the key was released sealed and not
/// opened here: exactly one of the two is printed.
#[derive(Serialize)]
enum KeyJson<'a> {
    #[serde(rename = "plaintext")]
    Plaintext(&'a str),
    #[serde(rename = "ciphertext_for_recipient")]
    Sealed(&'a str),
}

impl<'a> KeyJson<'a> {
    /// The text form: (label, base64).
    fn text(&self) -> (&'static str, &'a str) {
        match self {
            Self::Plaintext(p) => ("plaintext:   ", p),
            Self::Sealed(s) => ("sealed key:  ", s),
        }
    }
}

/// JSON shape of `datakey generate`.
#[derive(Serialize)]
struct GeneratedJson<'a> {
    #[serde(flatten)]
    released: KeyJson<'a>,
    ciphertext: &'a str,
    key_version: u32,
    lease_id: &'a str,
    expires_at: Option<String>,
}

/// JSON shape of `datakey decrypt`.
#[derive(Serialize)]
struct DecryptedJson<'a> {
    #[serde(flatten)]
    released: KeyJson<'a>,
    key: &'a str,
    key_version: u32,
    lease_id: &'a str,
    expires_at: Option<String>,
}

/// Prints a generated data key; `sealed` replaces the plaintext when given.
///
/// # Errors
/// I/O errors of `out`.
pub(crate) fn print_generated(
    dk: &DataKey,
    sealed: Option<&[u8]>,
    format: Format,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let key = b64(sealed.unwrap_or(&dk.plaintext));
    let key = match sealed {
        Some(_) => KeyJson::Sealed(&key),
        None => KeyJson::Plaintext(&key),
    };
    let ciphertext = b64(&dk.ciphertext);
    let expires_at = rfc3339(dk.expires_at);
    match format {
        Format::Json => write_json(
            out,
            &GeneratedJson {
                released: key,
                ciphertext: &ciphertext,
                key_version: dk.key_version,
                lease_id: &dk.lease_id,
                expires_at,
            },
        ),
        Format::Text => {
            let (label, value) = key.text();
            writeln!(out, "key version: {}", dk.key_version)?;
            writeln!(out, "lease:       {}", dk.lease_id)?;
            writeln!(out, "expires at:  {}", expires_at.as_deref().unwrap_or("-"))?;
            writeln!(out, "ciphertext:  {}", ciphertext.as_str())?;
            writeln!(out, "{label}{value}")
        }
    }
}

/// Prints a decrypted data key; `sealed` replaces the plaintext when given.
///
/// # Errors
/// I/O errors of `out`.
pub(crate) fn print_decrypted(
    dk: &DecryptedKey,
    sealed: Option<&[u8]>,
    format: Format,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let key = b64(sealed.unwrap_or(&dk.plaintext));
    let key = match sealed {
        Some(_) => KeyJson::Sealed(&key),
        None => KeyJson::Plaintext(&key),
    };
    let expires_at = rfc3339(dk.expires_at);
    match format {
        Format::Json => write_json(
            out,
            &DecryptedJson {
                released: key,
                key: &dk.key,
                key_version: dk.key_version,
                lease_id: &dk.lease_id,
                expires_at,
            },
        ),
        Format::Text => {
            let (label, value) = key.text();
            writeln!(out, "key:         {} (version {})", dk.key, dk.key_version)?;
            writeln!(out, "lease:       {}", dk.lease_id)?;
            writeln!(out, "expires at:  {}", expires_at.as_deref().unwrap_or("-"))?;
            writeln!(out, "{label}{value}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;
    use zeroize::Zeroizing;

    fn render(f: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> anyhow::Result<String> {
        let mut buf = Vec::new();
        f(&mut buf)?;
        Ok(String::from_utf8(buf)?)
    }

    #[test]
    fn generate_json_shape() -> anyhow::Result<()> {
        let dk = DataKey {
            plaintext: Zeroizing::new(vec![7; 32]),
            ciphertext: vec![1, 2, 3],
            key_version: 2,
            lease_id: "lease-1".into(),
            expires_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).ok(),
            lease_ttl: None,
        };
        let text = render(|o| print_generated(&dk, None, Format::Json, o))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(
            v,
            serde_json::json!({
                "plaintext": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
                "ciphertext": "AQID",
                "key_version": 2,
                "lease_id": "lease-1",
                "expires_at": "2023-11-14T22:13:20Z",
            })
        );
        let text = render(|o| print_generated(&dk, None, Format::Text, o))?;
        assert!(text.contains("lease:       lease-1") && text.contains("ciphertext:  AQID"));
        Ok(())
    }

    #[test]
    fn sealed_key_replaces_the_plaintext() -> anyhow::Result<()> {
        let dk = DataKey {
            plaintext: Zeroizing::new(Vec::new()),
            ciphertext: vec![1, 2, 3],
            key_version: 2,
            lease_id: "lease-1".into(),
            expires_at: None,
            lease_ttl: None,
        };
        let text = render(|o| print_generated(&dk, Some(&[0xff, 0xfe]), Format::Json, o))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(v["ciphertext_for_recipient"], "//4=");
        assert!(v.get("plaintext").is_none(), "{v}");
        let text = render(|o| print_generated(&dk, Some(&[0xff, 0xfe]), Format::Text, o))?;
        assert!(text.contains("sealed key:  //4=") && !text.contains("plaintext"));
        Ok(())
    }

    #[test]
    fn decrypt_json_shape() -> anyhow::Result<()> {
        let dk = DecryptedKey {
            plaintext: Zeroizing::new(vec![0xff; 2]),
            key: "datasets/demo".into(),
            key_version: 1,
            lease_id: "lease-2".into(),
            expires_at: None,
            lease_ttl: None,
        };
        let v: serde_json::Value =
            serde_json::from_str(&render(|o| print_decrypted(&dk, None, Format::Json, o))?)?;
        assert_eq!(
            v,
            serde_json::json!({
                "plaintext": "//8=",
                "key": "datasets/demo",
                "key_version": 1,
                "lease_id": "lease-2",
                "expires_at": null,
            })
        );
        Ok(())
    }
}
