//! Compiles the CSI and SeaweedFS filer protocol definitions with protox, a pure-Rust
//! protobuf compiler, so building kelp needs no `protoc` binary on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["csi/csi.proto", "seaweedfs/filer.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
