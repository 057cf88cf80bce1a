//! Generates the Rust code for every `.proto` file with a vendored `protoc`,
//! so a fresh machine needs no system package to build Sava.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts run single-threaded before any other code reads the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let files = [
        "proto/danube.proto",
        "proto/danube_schema.proto",
        "proto/danube_admin.proto",
        "proto/sava/v1/client.proto",
        "proto/sava/v1/admin.proto",
    ];
    tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::SavaCodec")
        .compile_protos(&files, &["proto"])?;

    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
