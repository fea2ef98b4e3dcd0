//! Kernel-vs-reference checks on fresh random inputs. The GPU tests (`tests/gpu_ops.rs`, with
//! proptest choosing shapes) and `harness verify` (a fixed list of cases) both run these, so a
//! kernel is judged the same way everywhere. Outputs are poisoned (NaN bytes) before each launch,
//! so an element the kernel failed to write cannot pass.

mod codec;
mod hopper;
mod ops;

pub use codec::check_e4m3_codec;
pub use hopper::{
    check_bulk_copy, check_tma_tile, check_wgmma_bf16, check_wgmma_bf16_trans_b, check_wgmma_e4m3,
};
pub use ops::*;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::rng::Rng;

/// One verified kernel case.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckReport {
    pub kernel: String,
    pub case: String,
    /// What `error` measures, e.g. "rel_l2" or "mismatches".
    pub metric: &'static str,
    pub error: f64,
    pub tolerance: f64,
    pub passed: bool,
    /// Extra facts (why the tolerance, what else was checked and failed).
    pub note: String,
}

impl CheckReport {
    pub fn new(
        kernel: &str,
        case: String,
        metric: &'static str,
        error: f64,
        tolerance: f64,
    ) -> Self {
        CheckReport {
            kernel: kernel.to_string(),
            case,
            metric,
            error,
            tolerance,
            passed: crate::metrics::passes(error, tolerance),
            note: String::new(),
        }
    }

    /// Adds a further condition; the report fails if it does not hold.
    pub fn require(mut self, ok: bool, what: impl Into<String>) -> Self {
        if !ok {
            self.passed = false;
            if !self.note.is_empty() {
                self.note.push_str("; ");
            }
            self.note.push_str(&what.into());
        }
        self
    }
}

/// Bound on ||out - ref|| / ||ref|| for BF16 outputs of element-wise ops computed in f32 from the
/// same BF16 inputs: each element's only divergence is a possible one-ulp difference after
/// rounding (f32 sums in another order, expf vs exp), at most 2^-8 relative and rare, so the norm
/// stays far below 2^-8; 4e-3 leaves margin without hiding a wrong element (any wrong index gives
/// errors of order 1).
pub const BF16_ELEMENTWISE_TOL: f64 = 4e-3;

/// Sizes of [`all_checks`]: the GPU's, or CPU-sized ones for the interpreter build
/// ([`crate::EMULATED`]) that keep the real row widths (7168, 2048, the 129 280-entry vocabulary
/// for one row) and the odd widths but few rows.
struct Sizes {
    rows: &'static [usize],
    embedding: (usize, usize, usize),
    sample_rows: &'static [usize],
}

fn sizes(quick: bool) -> Sizes {
    if crate::EMULATED {
        Sizes {
            rows: if quick { &[1, 7] } else { &[1, 7, 65] },
            embedding: (2048, 7168, 9),
            sample_rows: &[1],
        }
    } else {
        Sizes {
            rows: if quick {
                &[1, 7, 64]
            } else {
                &[1, 7, 64, 333, 2048]
            },
            embedding: (129_280, 7168, if quick { 16 } else { 300 }),
            sample_rows: if quick { &[1, 8] } else { &[1, 8, 64] },
        }
    }
}

/// Every shared-op and Hopper-primitive case `harness verify` runs. `quick` trims the large shapes.
pub fn all_checks(gpu: &Gpu, quick: bool) -> Vec<Result<CheckReport>> {
    let mut rng = Rng::fresh();
    let rng = &mut rng;
    let sizes = sizes(quick);
    let mut out = vec![check_e4m3_codec(gpu, rng)];
    for &t in sizes.rows {
        out.push(check_rms_norm(gpu, rng, t, 7168, false));
        out.push(check_rms_norm(gpu, rng, t, 7168, true));
        out.push(check_silu_mul(gpu, rng, t, 2048));
        out.push(check_quantize_fp8(
            gpu,
            rng,
            t,
            7168,
            false,
            crate::reference::ScaleLayout::BlockMajor,
            false,
        ));
        out.push(check_quantize_fp8(
            gpu,
            rng,
            t,
            2048,
            true,
            crate::reference::ScaleLayout::BlockMajor,
            true,
        ));
        out.push(check_rope_q(gpu, rng, t, 128));
        out.push(check_rope_kv(gpu, rng, t));
    }
    // Odd widths: scalar paths and partial quantization blocks.
    out.push(check_rms_norm(gpu, rng, 5, 1000, true));
    out.push(check_rms_norm(gpu, rng, 3, 512, false));
    out.push(check_silu_mul(gpu, rng, 9, 333));
    out.push(check_quantize_fp8(
        gpu,
        rng,
        6,
        300,
        false,
        crate::reference::ScaleLayout::TokenMajor,
        false,
    ));
    out.push(check_quantize_fp8(
        gpu,
        rng,
        5,
        200,
        true,
        crate::reference::ScaleLayout::TokenMajor,
        true,
    ));
    out.push(check_quantize_fp8(
        gpu,
        rng,
        3,
        1536,
        true,
        crate::reference::ScaleLayout::BlockMajor,
        false,
    ));
    let (vocab, hidden, tokens) = sizes.embedding;
    out.push(check_embedding(gpu, rng, vocab, hidden, tokens));
    out.push(check_embedding(gpu, rng, 1000, 100, 9));
    out.push(check_embedding_bad_id(gpu, rng));
    out.push(check_rope_bad_position(gpu, rng));
    for &b in sizes.sample_rows {
        out.push(check_argmax(gpu, rng, b, 129_280));
        out.push(check_sample(gpu, rng, b, 129_280, 0.7, 0.9));
        out.push(check_sample(gpu, rng, b, 129_280, 1.0, 1.0));
        out.push(check_sample_with_uniforms(gpu, rng, b, 129_280));
    }
    out.push(check_argmax(gpu, rng, 3, 1000));
    out.push(check_sample(gpu, rng, 16, 50, 1.5, 0.5));
    out.push(check_sample_with_uniforms(gpu, rng, 16, 50));
    out.push(check_bulk_copy(gpu, rng, 4096));
    out.push(check_tma_tile(gpu, rng, 150, 200));
    out.push(check_wgmma_bf16(gpu, rng, 256));
    out.push(check_wgmma_bf16_trans_b(gpu, rng, 256));
    out.push(check_wgmma_e4m3(gpu, rng, 512));
    out
}
