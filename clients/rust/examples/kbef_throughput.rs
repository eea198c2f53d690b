//! KBEF streaming throughput without disk or broker: encrypts N GiB of zeros from memory into
//! a sink, then decrypts a 256 MiB file from memory, with a fixed key. It measures the AEAD
//! loop alone (ring AES-256-GCM, the one segment buffer, the look-ahead copy), which is what
//! `keybroker encrypt|decrypt` adds on top of reading and writing the files.
//!
//! `cargo run --release -p keybroker-client --example kbef_throughput -- [GiB] [segment size]`

#![allow(clippy::print_stdout, reason = "an example prints its result")]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Instant;

use keybroker_client::file::{self, DEFAULT_SEGMENT_SIZE, Header};

/// `len` zero bytes.
struct Zeros(u64);

impl Read for Zeros {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(usize::try_from(self.0).unwrap_or(usize::MAX));
        buf[..n].fill(0);
        self.0 -= n as u64;
        Ok(n)
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let gib: u64 = args.next().map_or(Ok(2), |a| a.parse())?;
    let segment: u32 = args
        .next()
        .map_or(Ok(DEFAULT_SEGMENT_SIZE), |a| a.parse())?;
    let key = [7u8; 32];
    let header = Header::new(
        segment,
        [1; 32],
        [2; 7],
        "bench/k",
        &BTreeMap::new(),
        &[3; 60],
    )?;

    let len = gib << 30;
    let start = Instant::now();
    file::encrypt_stream(
        &mut Zeros(len),
        &mut std::io::sink(),
        &header,
        &key,
        &mut |_| {},
    )?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "encrypt {gib} GiB, segment {segment}: {secs:.2} s, {:.2} GiB/s",
        gib as f64 / secs
    );

    let small = 256u64 << 20;
    let mut sealed = Vec::with_capacity(usize::try_from(small)? + (1 << 20));
    file::encrypt_stream(&mut Zeros(small), &mut sealed, &header, &key, &mut |_| {})?;
    let mut input = &sealed[..];
    let h = file::read_header(&mut input)?;
    let dec = file::Decryptor::new(h, &key, None)?;
    let start = Instant::now();
    let mut sink = std::io::sink();
    dec.decrypt_stream(&mut input, &mut sink, &mut |_| {})?;
    sink.flush()?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "decrypt 0.25 GiB from memory: {secs:.3} s, {:.2} GiB/s",
        0.25 / secs
    );
    Ok(())
}
