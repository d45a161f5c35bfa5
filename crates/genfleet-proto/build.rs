//! Compiles `proto/genfleet/v1/*.proto` with protox (pure Rust, so no system
//! `protoc` is needed), generates prost types, and pbjson serde impls for the
//! canonical proto3 JSON mapping.

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest.join("../../proto");
    let files = [
        "genfleet/v1/job.proto",
        "genfleet/v1/result.proto",
        "genfleet/v1/event.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    let descriptors = protox::compile(files, [&proto_root])?;
    let encoded = descriptors.encode_to_vec();

    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .compile_fds(descriptors)?;

    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        // Forward compatibility: a newer publisher's extra fields are ignored.
        .ignore_unknown_fields()
        // Results carry every field, defaults included, so readers in any
        // language never meet a missing field.
        .emit_fields()
        .build(&[".genfleet.v1"])?;
    Ok(())
}
