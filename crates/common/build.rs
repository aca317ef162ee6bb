//! Generates the protobuf messages and the tonic services with a vendored `protoc`, so
//! building needs no system protobuf compiler. Every file is in package `rtd`, so they
//! all land in one generated module.
const PROTOS: [&str; 7] = [
    "proto/common.proto",
    "proto/gcs_service.proto",
    "proto/node_manager.proto",
    "proto/core_worker.proto",
    "proto/plasma.proto",
    "proto/object_manager.proto",
    "proto/rpc.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().bytes(".").compile_protos(&PROTOS, &["proto"])?;
    Ok(())
}
