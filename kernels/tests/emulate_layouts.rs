//! Compiles and runs the interpreter's layout check against CuTe
//! (`kernels/emulate/tests/layouts_vs_cute.cpp`) with the host C++ compiler: the emulated wgmma
//! fragments, matrix descriptors, TMA swizzle and mma.sync fragments must agree with the layouts
//! of the pinned CUTLASS headers, and the emulated primitives must compute what plain loops do.
//!
//! Headers: `<repo>/.cuda/include` (CUDA, from `scripts/install-cuda-toolchain.sh`) and
//! `<repo>/.cuda/cutlass/include` (CuTe, from `scripts/install-cutlass-headers.sh`, which the
//! toolchain script runs), or `DSV3_CUTLASS_INCLUDE`. Compiler: `$CXX`, else `g++`.
#![cfg(feature = "emulate")]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("kernels").join("include").is_dir())
        .expect("workspace root (a folder with kernels/include)")
        .to_path_buf()
}

/// An include directory that must hold `probe`, or a panic naming the script that installs it.
fn require(dir: PathBuf, probe: &str, script: &str) -> PathBuf {
    assert!(
        dir.join(probe).is_file(),
        "{} not found: install it with `bash scripts/{script}`",
        dir.join(probe).display()
    );
    dir
}

#[test]
fn emulated_layouts_match_cute() {
    let root = workspace_root();
    let cuda = require(
        root.join(".cuda").join("include"),
        "cuda.h",
        "install-cuda-toolchain.sh",
    );
    let cutlass = require(
        env::var_os("DSV3_CUTLASS_INCLUDE")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".cuda").join("cutlass").join("include")),
        "cute/tensor.hpp",
        "install-cutlass-headers.sh",
    );
    let tests = root.join("kernels").join("emulate").join("tests");
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("layouts_vs_cute");
    let cxx = env::var("CXX").unwrap_or_else(|_| "g++".to_string());

    let compile = Command::new(&cxx)
        .args([
            "-std=c++17",
            "-O1",
            "-DDSV3_EMULATE",
            "-Wno-deprecated-declarations",
        ])
        .arg("-I")
        .arg(root.join("kernels").join("include"))
        .arg("-I")
        .arg(&cuda)
        .arg("-I")
        .arg(cuda.join("cccl"))
        .arg("-I")
        .arg(&cutlass)
        .arg(tests.join("layouts_vs_cute.cpp"))
        .arg(tests.join("fake_runtime.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{cxx}`: {e}"));
    assert!(
        compile.status.success(),
        "compiling layouts_vs_cute.cpp failed:\n{}",
        String::from_utf8_lossy(&compile.stderr)
    );

    let run = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the emulated layouts disagree with CuTe ({}):\n{out}{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    println!("{out}");
}
