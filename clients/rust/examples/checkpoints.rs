//! A Rust training job's checkpointing, sketched: every "epoch" writes an encrypted checkpoint
//! through the lease-aware `DataKeyCache` (one broker call per lease, not per file), then the
//! last checkpoint is read back. Needs a broker: `keybrokerd dev`, `source .state/dev/client.env`,
//! then `cargo run -p keybroker-client --example checkpoints -- /tmp/ckpts`.

#![allow(clippy::print_stdout, reason = "an example prints its result")]

use std::collections::BTreeMap;
use std::path::PathBuf;

use keybroker_client::file::{self, DEFAULT_SEGMENT_SIZE};
use keybroker_client::{Client, ClientConfig, DataKeyCache};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "ckpts".into()));
    std::fs::create_dir_all(&dir)?;
    let env = |k: &str| std::env::var(k).ok().map(PathBuf::from);
    let cfg = ClientConfig {
        ca: env("KEYBROKER_CA"),
        token_file: env("KEYBROKER_TOKEN_FILE"),
        ..ClientConfig::new(std::env::var("KEYBROKER_ENDPOINT")?)
    };
    let cache = DataKeyCache::new(Client::connect(cfg).await?);
    let context = BTreeMap::from([("run".to_owned(), "example".to_owned())]);

    let mut weights = vec![0f32; 1 << 16];
    let mut last = dir.join("none");
    for epoch in 0..5u8 {
        weights.iter_mut().for_each(|w| *w += 0.1); // "training"
        let bytes: Vec<u8> = weights.iter().flat_map(|w| w.to_le_bytes()).collect();
        let (header, key) = cache
            .new_file("datasets/demo", &context, DEFAULT_SEGMENT_SIZE)
            .await?;
        last = dir.join(format!("ckpt-{epoch}.kbef"));
        let mut out = std::io::BufWriter::new(std::fs::File::create(&last)?);
        file::encrypt_stream(
            &mut &bytes[..],
            &mut out,
            &header,
            key.plaintext(),
            &mut |_| {},
        )?;
    }
    println!("5 checkpoints, {} broker call(s)", cache.fetches());

    let mut input = std::io::BufReader::new(std::fs::File::open(&last)?);
    let header = file::read_header(&mut input)?;
    let key = cache.file_key(&header).await?;
    let dec = file::Decryptor::new(header, key.plaintext(), Some(cache.lease_end(&key)))?;
    let mut plain = Vec::new();
    dec.decrypt_stream(&mut input, &mut plain, &mut |_| {})?;
    println!(
        "restored {} weights from {}",
        plain.len() / 4,
        last.display()
    );
    Ok(())
}
