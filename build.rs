//! Builds the XDP steering program (`ffi/xdp/steer.c`) with clang into
//! `$OUT_DIR/steer.o`, which `src/io/xdp.rs` embeds.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "ffi/xdp/steer.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("steer.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let status = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-c", source, "-o",
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
