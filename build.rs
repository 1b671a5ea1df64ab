//! Builds the XDP programs under `ffi/xdp/` with clang into `$OUT_DIR`:
//! `steer.o` (the steering program `src/io/xdp.rs` embeds) and `bench.o`
//! (the throughput run's generator, sink and bounce programs). Only with
//! the `xdp` feature: other builds have no XDP program to embed.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    if std::env::var_os("CARGO_FEATURE_XDP").is_none() {
        println!("cargo:rerun-if-changed=build.rs");
        return;
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed=ffi/xdp/common.h");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    for name in ["steer", "bench"] {
        let source = format!("ffi/xdp/{name}.c");
        println!("cargo:rerun-if-changed={source}");
        let out = out_dir.join(format!("{name}.o"));
        let status = Command::new(&clang)
            .args([
                "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-c", &source, "-o",
            ])
            .arg(&out)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed to build {source} ({s})"),
            Err(e) => panic!(
                "cannot run {clang} to build the XDP program {source}: {e}; install clang (bash .ci/setup does)"
            ),
        }
    }
}
