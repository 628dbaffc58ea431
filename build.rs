//! Compiles the vendored `proto/` tree into the file descriptor set that gRPC reflection
//! serves. protox is a pure-Rust protobuf compiler: no system `protoc`, no network.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["envoy/service/ratelimit/v3/rls.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("rls_descriptor.bin");
    std::fs::write(out, descriptors.encode_to_vec())?;
    Ok(())
}
