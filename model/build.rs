fn main() {
    cuda_build::build_crate_kernels();
    avx512_cfg();
}

/// Sets `cfg(dsv3_avx512)` where the compiler has AVX-512 target features and intrinsics
/// (stable since Rust 1.89): the CPU kernels then add AVX-512 paths, chosen at run time. Older
/// compilers (down to the workspace's 1.86) build the AVX2 and portable paths only.
fn avx512_cfg() {
    println!("cargo:rustc-check-cfg=cfg(dsv3_avx512)");
    println!("cargo:rerun-if-env-changed=RUSTC");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    // "rustc 1.95.0 (...)"
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    if minor.is_some_and(|m| m >= 89) {
        println!("cargo:rustc-cfg=dsv3_avx512");
    }
}
