//! Compiles `proto/hindsight.proto` into Rust with prost-build. The `.proto` is parsed by
//! `protox` (pure Rust), so building needs no system `protoc`.

use std::error::Error;

/// The schema, relative to this crate's root.
const PROTO_FILE: &str = "proto/hindsight.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_FILE}");
    println!("cargo:rerun-if-changed=build.rs");
    let descriptors = protox::compile(["hindsight.proto"], ["proto"])?;
    prost_build::Config::new()
        // `bytes` fields become `bytes::Bytes`, so a WAL slice decoded from a frame shares the
        // frame's buffer instead of being copied.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
