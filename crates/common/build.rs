//! Generates the protobuf messages and the tonic services with a vendored `protoc`, so
//! building needs no system protobuf compiler.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto/rtd.proto");
    tonic_prost_build::configure().bytes(".").compile_protos(&["proto/rtd.proto"], &["proto"])?;
    Ok(())
}
