//! Builds the kernel fast path (`bpf/fastpath.bpf.c`) with clang into
//! `$OUT_DIR/fastpath.bpf.o`, which `vswitch` embeds. Without clang (or when
//! it fails) the object is left empty: vswitch still builds, and
//! `fastpath = "ebpf"` then reports once that the fast path was not built
//! and runs in the slow path. `VSWITCH_CLANG` names another clang.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/fastpath.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=VSWITCH_CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("fastpath.bpf.o");
    let clang = std::env::var("VSWITCH_CLANG").unwrap_or_else(|_| "clang".into());
    let arch_inc = format!(
        "/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{arch_inc}"))
        .args(["-c", src, "-o"])
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            println!("cargo:warning=clang failed on {src} ({s}): the eBPF fast path is not built");
            std::fs::write(&obj, b"").expect("write OUT_DIR");
        }
        Err(e) => {
            println!(
                "cargo:warning={clang} not found ({e}): the eBPF fast path is not built (apt-get install clang)"
            );
            std::fs::write(&obj, b"").expect("write OUT_DIR");
        }
    }
}
