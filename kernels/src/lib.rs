//! Shared foundation of the DeepSeek-V3 inference workspace.
//!
//! - [`dtype`], [`rng`], [`metrics`], [`stats`], [`error`]: element types (with the exact e4m3
//!   codec), the workspace's random source, error metrics, timing summaries and the error type.
//! - [`reference`]: the shared ops as plain Rust (the spec).
//! - [`cases`]: the benchmark cases of the shared ops, one list for the harness and criterion.
//! - With the `cuda` feature: [`gpu`] (the runtime on cudarc: device, buffers, modules, launches,
//!   event timing), [`ops`] (launch wrappers of `cuda/*.cu`) and [`checks`] (kernel-vs-reference
//!   checks used by both the tests and `harness verify`).
//! - With the `emulate` feature (implies `cuda`): the same [`gpu`] API on an emulated device, whose
//!   launches run the host-compiled kernels in the interpreter (`kernels/emulate`), so every GPU
//!   test and check runs on a CPU.

// Lets the generated `cubins.rs` name `::kernels::Cubin` from inside this crate too.
extern crate self as kernels;

pub mod cases;
pub mod dtype;
mod emu_abi;
pub mod error;
pub mod metrics;
pub mod reference;
pub mod rng;
pub mod stats;

#[cfg(feature = "cuda")]
pub mod checks;
#[cfg(feature = "cuda")]
pub mod gpu;
#[cfg(feature = "cuda")]
pub mod ops;

pub use dtype::{DType, E4m3, Element, Float};
pub use emu_abi::{EmuKernel, EmuModule};
pub use error::{Error, Result};

/// One compiled CUDA source file: a fatbin with sm_90a SASS and compute_90a PTX, embedded in the
/// binary by the crate's build script; in the interpreter build (feature `emulate`) the file's
/// host-compiled kernel table instead.
#[derive(Clone, Copy, Debug)]
pub struct Cubin {
    /// `<crate>/<file stem>`, unique across the workspace.
    pub name: &'static str,
    /// The fatbin (empty in the interpreter build).
    pub image: &'static [u8],
    /// The kernel table's accessor in the interpreter build (`None` in the nvcc build).
    pub emulated: Option<unsafe extern "C" fn() -> *const EmuModule>,
}

/// The fatbins of this crate's `cuda/*.cu` (empty without the `cuda` feature).
pub mod cubins {
    include!(concat!(env!("OUT_DIR"), "/cubins.rs"));
}

/// Whether this build contains the CUDA kernels.
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");

/// Whether this is the interpreter build (feature `emulate`): the same `.cu` sources compiled as
/// host C++ and run on the CPU behind an emulated [`gpu`] runtime. It executes CUDA threads as
/// fibers, orders of magnitude slower than a GPU, so the GPU tests and `harness verify` checks
/// pick CPU-sized shapes (still with tails off the tile grid, empty groups and several pipeline
/// stages) when this is true, and keep their real-GPU shapes otherwise.
pub const EMULATED: bool = cfg!(feature = "emulate");

/// The environment variable that turns every skipped GPU test into a failure: set
/// `DSV3_REQUIRE_GPU=1` on a machine that has a GPU, so a test that would otherwise skip (no
/// device found, a driver that does not load, a build without `--features cuda`) fails loudly
/// instead of passing in silence. `harness verify` treats it as `--require-gpu`.
pub const REQUIRE_GPU_VAR: &str = "DSV3_REQUIRE_GPU";

/// Whether [`REQUIRE_GPU_VAR`] is set to a true value (`1`, `true`, `yes`).
pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU_VAR)
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// Prints a line that stays visible under `cargo test` (libtest captures `println!`, not direct
/// writes to the stderr handle): GPU tests use it to say they were skipped for want of a GPU.
/// With [`REQUIRE_GPU_VAR`] set it panics instead, naming the test and the reason.
pub fn report_skip(test: &str, why: &str) {
    if gpu_required() {
        panic!("{test}: would skip ({why}), but {REQUIRE_GPU_VAR}=1 requires a GPU");
    }
    report_note(test, &format!("skipped: {why}"));
}

/// Prints `<test>: <note>` visibly under `cargo test`: for a part of a test or bench left out
/// for a reason other than a missing GPU (a missing optional library, say), which
/// [`REQUIRE_GPU_VAR`] does not turn into a failure.
pub fn report_note(test: &str, note: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{test}: {note}");
}
