//! Launch wrappers of the shared-op kernels in `kernels/cuda/`. Each checks shapes and arguments
//! against the reference's contract before launching (a bad shape is an error naming the
//! argument, never an out-of-bounds access), then launches on the `Gpu`'s stream without
//! synchronizing.

mod convert;
mod embedding;
mod fp8_quant;
mod rmsnorm;
mod rope;
mod sampling;
mod silu_mul;

pub use convert::{e4m3_to_f32, f32_to_e4m3};
pub use embedding::embedding;
pub use fp8_quant::{quantize_fp8, silu_and_mul_quantize_fp8, Fp8Buffers};
pub use rmsnorm::{fused_add_rms_norm, rms_norm};
pub use rope::{apply_rope, RopeTable};
pub use sampling::{argmax, sample, sample_with_uniforms};
pub use silu_mul::silu_and_mul;

use crate::error::{Error, Result};

/// Converts a size to the i32 a kernel parameter takes, or names what overflowed.
pub(crate) fn as_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} does not fit in i32")))
}

/// Whether 16-byte vector access works for rows of `row_len` bf16 at these addresses.
pub(crate) fn vec8_ok(row_len: usize, ptrs: &[u64]) -> bool {
    row_len % 8 == 0 && ptrs.iter().all(|p| p % 16 == 0)
}
