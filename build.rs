//! Compiles `proto/` into Rust with protox, a pure-Rust protobuf compiler, so a fresh
//! machine needs only cargo (no `protoc`). Generated code lands in OUT_DIR, never in git.
//! The Microsoft and the Dapr dialect define messages of the same names, so each is compiled
//! on its own into its own directory (and Rust module).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["orchestrator_service.proto"], ["proto"])?;
    // Orchestrator answers are counted before they are decoded (src/grpc/codec.rs).
    let codec = "crate::grpc::codec::BoundedCodec";
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path(codec)
        .compile_fds(files)?;

    let dapr_out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("dapr");
    std::fs::create_dir_all(&dapr_out)?;
    let dapr = protox::compile(["orchestrator_service.proto"], ["proto/dapr"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path(codec)
        .out_dir(dapr_out)
        .compile_fds(dapr)?;
    Ok(())
}
