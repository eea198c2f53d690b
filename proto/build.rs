//! Compiles `keybroker/v1/*.proto` with protox (pure Rust, no system `protoc`) and writes the
//! descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "keybroker/v1/common.proto",
        "keybroker/v1/datakeys.proto",
        "keybroker/v1/keyadmin.proto",
        "keybroker/v1/audit.proto",
        "keybroker/v1/signing.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("keybroker_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
