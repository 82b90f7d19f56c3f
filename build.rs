//! Compiles `proto/registro.proto` into Rust (prost messages, tonic clients and servers) and
//! writes the file descriptor set that server reflection serves. protoc comes from the
//! `protoc-bin-vendored` crate, so no system install is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // SAFETY: a build script is single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("registro_descriptor.bin"))
        .compile_protos(&["proto/registro.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
