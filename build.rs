//! Compiles KEDA's external scaler contract without a system `protoc`: `protox` parses the
//! proto into a descriptor set and `tonic-prost-build` generates the server and client from it.

use std::{env, fs, path::PathBuf};

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/externalscaler.proto";
    // protox does not print rerun-if-changed for us.
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::compile([proto], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // Kept for gRPC server reflection.
    fs::write(
        out_dir.join("externalscaler_descriptor.bin"),
        fds.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        // prost with small per-RPC buffers: an open StreamIsActive keeps its own (src/grpc/codec.rs).
        .codec_path("crate::grpc::codec::SmallCodec")
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
