//! Block-scaled FP8 GEMMs for Hopper: dense NT, grouped contiguous (MoE prefill) and grouped
//! masked (MoE decode), spec §4 and §5.
//!
//! - [`layout`]: the operand layouts and alignment constants every entry point uses (one place).
//! - [`reference`]: the spec in plain Rust (literal per-block promotion, an f64 check, and the
//!   fast CPU path the model's CPU backend uses).
//! - [`tiles`]: which kernel instantiation runs a given shape.
//! - With the `cuda` feature: [`gpu`] (launch wrappers of `cuda/fp8_gemm.cu`) and [`checks`]
//!   (kernel-vs-reference checks for the tests and `harness verify`).

pub mod cases;
pub mod inputs;
pub mod layout;
pub mod reference;
pub mod tiles;

#[cfg(feature = "cuda")]
pub mod checks;
#[cfg(feature = "cuda")]
pub mod gpu;

pub use layout::{GROUPED_M_ALIGN, K_BLOCK, N_ALIGN, W_BLOCK};

/// The fatbins of this crate's `cuda/*.cu` (empty without the `cuda` feature).
pub mod cubins {
    include!(concat!(env!("OUT_DIR"), "/cubins.rs"));
}
