//! Compiles `proto/**/*.proto` with the pure-Rust `protox` compiler (no `protoc` needed) and generates
//! prost messages plus tonic client and server stubs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: &[&str] = &["proto/flotilla/v1/coordinator.proto"];
    println!("cargo:rerun-if-changed=proto");
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .emit_rerun_if_changed(false)
        // Hand-written `Debug` impls in `src/lib.rs` redact the secrets these messages carry.
        .skip_debug([".flotilla.v1.EnrollRequest", ".flotilla.v1.EnrollResponse"])
        .compile_fds(fds)?;
    Ok(())
}
