//! Compiles `proto/` into Rust with protox, a pure-Rust protobuf compiler, so a fresh
//! machine needs only cargo (no `protoc`). Generated code lands in OUT_DIR, never in git.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["orchestrator_service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    Ok(())
}
