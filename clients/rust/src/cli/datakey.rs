//! `keybroker datakey generate|decrypt`: a data key with its lease, printed as JSON
//! (`plaintext`/`ciphertext` in standard base64, `expires_at` in RFC 3339) or as text.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use keybroker_client::{DataKey, DecryptedKey};
use serde::Serialize;

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
    },
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
            Self::Generate { key, context, ttl } => {
                let context = pairs_to_map("context", context)?;
                let client = super::connect(global).await?;
                let dk = client.generate_data_key(key, &context, *ttl).await?;
                print_generated(&dk, format, out)?;
            }
            Self::Decrypt {
                ciphertext,
                context,
                ttl,
            } => {
                let context = pairs_to_map("context", context)?;
                let ciphertext = from_b64(ciphertext)?;
                let client = super::connect(global).await?;
                let dk = client.decrypt(&ciphertext, &context, *ttl).await?;
                print_decrypted(&dk, format, out)?;
            }
        }
        Ok(())
    }
}

/// JSON shape of `datakey generate`.
#[derive(Serialize)]
struct GeneratedJson<'a> {
    plaintext: &'a str,
    ciphertext: &'a str,
    key_version: u32,
    lease_id: &'a str,
    expires_at: Option<String>,
}

/// JSON shape of `datakey decrypt`.
#[derive(Serialize)]
struct DecryptedJson<'a> {
    plaintext: &'a str,
    key: &'a str,
    key_version: u32,
    lease_id: &'a str,
    expires_at: Option<String>,
}

/// Prints a generated data key.
///
/// # Errors
/// I/O errors of `out`.
pub(crate) fn print_generated(
    dk: &DataKey,
    format: Format,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let plaintext = b64(&dk.plaintext);
    let ciphertext = b64(&dk.ciphertext);
    let expires_at = rfc3339(dk.expires_at);
    match format {
        Format::Json => write_json(
            out,
            &GeneratedJson {
                plaintext: &plaintext,
                ciphertext: &ciphertext,
                key_version: dk.key_version,
                lease_id: &dk.lease_id,
                expires_at,
            },
        ),
        Format::Text => {
            writeln!(out, "key version: {}", dk.key_version)?;
            writeln!(out, "lease:       {}", dk.lease_id)?;
            writeln!(out, "expires at:  {}", expires_at.as_deref().unwrap_or("-"))?;
            writeln!(out, "ciphertext:  {}", ciphertext.as_str())?;
            writeln!(out, "plaintext:   {}", plaintext.as_str())
        }
    }
}

/// Prints a decrypted data key.
///
/// # Errors
/// I/O errors of `out`.
pub(crate) fn print_decrypted(
    dk: &DecryptedKey,
    format: Format,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let plaintext = b64(&dk.plaintext);
    let expires_at = rfc3339(dk.expires_at);
    match format {
        Format::Json => write_json(
            out,
            &DecryptedJson {
                plaintext: &plaintext,
                key: &dk.key,
                key_version: dk.key_version,
                lease_id: &dk.lease_id,
                expires_at,
            },
        ),
        Format::Text => {
            writeln!(out, "key:         {} (version {})", dk.key, dk.key_version)?;
            writeln!(out, "lease:       {}", dk.lease_id)?;
            writeln!(out, "expires at:  {}", expires_at.as_deref().unwrap_or("-"))?;
            writeln!(out, "plaintext:   {}", plaintext.as_str())
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
        let text = render(|o| print_generated(&dk, Format::Json, o))?;
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
        let text = render(|o| print_generated(&dk, Format::Text, o))?;
        assert!(text.contains("lease:       lease-1") && text.contains("ciphertext:  AQID"));
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
            serde_json::from_str(&render(|o| print_decrypted(&dk, Format::Json, o))?)?;
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
