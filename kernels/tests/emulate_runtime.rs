//! The kernel interpreter's core on hand-written kernels (`kernels/emulate/tests/runtime_smoke.cu`,
//! compiled as host C++ with the interpreter's prelude and run as a program): barriers, shuffles,
//! ballots, atomics and dynamic shared memory give exact results, and a broken kernel (deadlock,
//! divergent warp collective, out-of-bounds global or shared access, `__trap`, an endless loop)
//! ends its launch with an error that names it, instead of hanging or crashing the process.
#![cfg(feature = "emulate")]

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn interpreter_core_smoke() {
    let ws = workspace();
    let cuda_include = ws.join(".cuda").join("include");
    assert!(
        cuda_include.join("cuda_bf16.h").is_file(),
        "CUDA headers not found under {}: run scripts/install-cuda-toolchain.sh",
        cuda_include.display()
    );
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("emu_runtime_smoke");
    let emulate = ws.join("kernels").join("emulate");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let build = Command::new(&cxx)
        .args([
            "-std=c++17",
            "-O1",
            "-DDSV3_EMULATE",
            "-include",
            "dsv3/emu/cuda_emu.h",
        ])
        .arg("-I")
        .arg(ws.join("kernels").join("include"))
        .arg("-I")
        .arg(&cuda_include)
        .arg("-I")
        .arg(cuda_include.join("cccl"))
        .args(["-x", "c++"])
        .arg(emulate.join("tests").join("runtime_smoke.cu"))
        .args(["-x", "none"])
        .args(["fiber.cpp", "memory.cpp", "runtime.cpp"].map(|f| emulate.join(f)))
        .args(["-lpthread", "-o"])
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cxx}: {e}"));
    assert!(
        build.status.success(),
        "building the smoke test failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(&out).output().expect("running the smoke test");
    let stdout = String::from_utf8_lossy(&run.stdout);
    println!("{stdout}");
    assert!(
        run.status.success() && stdout.contains("all passed"),
        "interpreter smoke test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
