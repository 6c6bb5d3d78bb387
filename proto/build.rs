//! Compiles the certfleet protobuf API with tonic-prost-build.
//!
//! `protoc` is found in this order: the `PROTOC` environment variable; the binary shipped in
//! `protoc-bin-vendored` (feature `vendored-protoc`, on by default); `protoc` on `PATH`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["certfleet/v1/certfleet.proto"];
    let includes = ["."];

    let mut config = tonic_prost_build::Config::new();

    #[cfg(feature = "vendored-protoc")]
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }

    // Written by hand, with room for items the controller encodes itself (see `src/wire.rs`).
    config.extern_path(".certfleet.v1.InventoryList", "crate::wire::InventoryList");

    tonic_prost_build::configure()
        // Smaller per-call buffers (see `src/codec.rs`).
        .codec_path("crate::codec::SmallBuffers")
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}
