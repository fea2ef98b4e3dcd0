//! Plain-Rust references of the shared ops: the spec (`docs/spec.md`) written
//! literally, f32 arithmetic, one rounding per stored value. Every CUDA kernel in `ops` is checked
//! against these, and the model's CPU backend is built from them.

pub mod embedding;
pub mod fp8_quant;
pub mod rmsnorm;
pub mod rope;
pub mod sampling;
pub mod silu_mul;

pub use embedding::embedding;
pub use fp8_quant::{
    dequantize_fp8, quantize_fp8, silu_and_mul_quantize_fp8, Fp8Activations, ScaleLayout, FP8_BLOCK,
};
pub use rmsnorm::{fused_add_rms_norm, rms_norm};
pub use rope::{apply_rope, RopeLayout, RopeParams, YarnScaling};
pub use sampling::{argmax, sample, SamplingParams};
pub use silu_mul::silu_and_mul;
