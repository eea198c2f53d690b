//! Compiles the plugin's own copies of the OpenBao KMS plugin protocol (`proto/*.proto`) with
//! protox (no system `protoc`). Server stubs for the plugin, client stubs for the tests.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["wrapping.proto", "pb.proto", "plugin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed=proto/{f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
