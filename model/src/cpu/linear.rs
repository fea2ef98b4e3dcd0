//! Linear layers `y = x W^T` of the CPU backend, in the two precisions.
//!
//! - `exact`: W dequantized to f32 once at load, x in f32, f32 products through the `gemm` crate
//!   (the oracle the goldens are checked with).
//! - `fp8`: FP8 weights kept as stored; x quantized per token per 128 channels (spec §4; with the
//!   checkpoint's `scale_fmt: "ue8m0"` each activation scale is rounded up to a power of two, as
//!   DeepSeek-V3.1's inference code does) and multiplied by the fp8-gemm crate's reference (f32
//!   per-block partials promoted with the two scales), output rounded to BF16 as the GPU GEMM
//!   writes it.
//!
//! In `fp8`, the linear weights the released checkpoints store in FP8 arrive here as FP8 even from
//! a BF16, F16 or F32 checkpoint: [`weights::linear_weight`](super::weights::linear_weight)
//! quantizes them at load exactly as `dsv3 convert --to fp8` would. The weights that are never
//! FP8 (router gate, lm_head, eh_proj, shared_head.head), and every weight in `exact`, keep their
//! stored values (BF16, F16 or F32, all exact in f32) and multiply f32 activations in f32.

use fp8_gemm::reference::{gemm_nt_f32, Fp8Weights};
use half::bf16;
use kernels::reference::fp8_quant::Fp8Activations;
use kernels::reference::{quantize_fp8, ScaleLayout};

use crate::checkpoint::LinearWeight;
use crate::error::{ModelError, Result};

use super::row_invariant::fp8_matmul_row_invariant;
use super::skinny::matmul_nt_skinny;
use super::Precision;

/// One linear layer's weight in the form its precision multiplies.
#[derive(Clone, Debug)]
pub enum Linear {
    /// Row-major f32 [n, k]; `bf16`: the same values as BF16 where every one of them is a BF16
    /// value (a BF16 checkpoint), which the few-row products ([`matmul_nt_skinny`]) stream
    /// instead: half the bytes, widened back to the same f32 values as they are loaded, so the
    /// results are the same bits.
    F32 {
        w: Vec<f32>,
        n: usize,
        k: usize,
        bf16: Option<Vec<bf16>>,
    },
    /// Block-scaled FP8 (the checkpoint's codes and `weight_scale_inv`); `ue8m0`: activation
    /// scales rounded up to powers of two.
    Fp8 { w: Fp8Weights, ue8m0: bool },
}

impl Linear {
    /// Prepares `weight` (tensor `name`) for `precision`; `ue8m0` rounds the FP8 activation
    /// scales up to powers of two (the checkpoint's `scale_fmt`).
    pub fn new(
        name: &str,
        weight: LinearWeight,
        precision: Precision,
        ue8m0: bool,
    ) -> Result<Self> {
        match (weight, precision) {
            (LinearWeight::Fp8(w), Precision::Fp8) => {
                let (n, k) = (w.n, w.k);
                Fp8Weights::new(w.q, w.scales, n, k)
                    .map(|w| Linear::Fp8 { w, ue8m0 })
                    .map_err(|e| ModelError::config(name, format!("cannot run in fp8: {e}")))
            }
            (w, _) => {
                let (n, k) = w.dims();
                Ok(Linear::from_f32(w.to_f32(), n, k))
            }
        }
    }

    /// A non-FP8 tensor used as a linear weight (`lm_head`, the router gate), in f32.
    pub fn from_f32(w: Vec<f32>, n: usize, k: usize) -> Self {
        let bf16 = bf16_copy(&w);
        Linear::F32 { w, n, k, bf16 }
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        match self {
            Linear::F32 { n, .. } => *n,
            Linear::Fp8 { w, .. } => w.n,
        }
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        match self {
            Linear::F32 { k, .. } => *k,
            Linear::Fp8 { w, .. } => w.k,
        }
    }

    /// The weights in f32 (for the absorbed attention, which reads `kv_b_proj` per head).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Linear::F32 { w, .. } => w.clone(),
            Linear::Fp8 { w, .. } => {
                let table = kernels::dtype::e4m3_decode_table();
                let kb = w.k_blocks();
                (0..w.n * w.k)
                    .map(|i| {
                        let (r, c) = (i / w.k, i % w.k);
                        table[usize::from(w.q[i].0)] * w.scales[(r / 128) * kb + c / 128]
                    })
                    .collect()
            }
        }
    }

    /// [`forward`](Self::forward) where every output row depends on its input row alone,
    /// whatever the number of rows: the output heads use it, so a sequence's logits come out
    /// the same bit for bit whether one row per sequence ([`LogitRows::Last`]) or every row
    /// ([`LogitRows::All`], verify steps, `dsv3 logits`) is asked for; and every linear layer of
    /// a distributed world does, so the world size changes no bit (see `crate::dist`).
    ///
    /// [`LogitRows::Last`]: crate::engine::LogitRows::Last
    /// [`LogitRows::All`]: crate::engine::LogitRows::All
    pub fn forward_row_invariant(&self, x: &[f32]) -> Result<Vec<f32>> {
        match self {
            Linear::F32 {
                bf16: Some(wb),
                n,
                k,
                ..
            } => Ok(matmul_nt_skinny(x, wb, x.len() / k, *n, *k)),
            Linear::F32 { w, n, k, .. } => Ok(matmul_nt_skinny(x, w, x.len() / k, *n, *k)),
            Linear::Fp8 { w, ue8m0 } => {
                let a = quantize_fp8(x, w.k, *ue8m0, ScaleLayout::TokenMajor)?;
                self.forward_quantized(&a, true)
            }
        }
    }

    /// `y = x W^T` for activations already quantized per token per 128 channels (token-major
    /// scales): what an expert runs on the FP8 rows expert parallelism dispatches. Equal to
    /// [`forward`](Self::forward) (or, with `row_invariant`,
    /// [`forward_row_invariant`](Self::forward_row_invariant)) of the rows those codes were made
    /// from, since quantizing is the first thing both do. A non-FP8 weight multiplies the
    /// dequantized rows.
    pub fn forward_quantized(&self, a: &Fp8Activations, row_invariant: bool) -> Result<Vec<f32>> {
        match self {
            Linear::Fp8 { w, .. } => {
                let y = if row_invariant {
                    fp8_matmul_row_invariant(a, w)?
                } else {
                    gemm_nt_f32(a, w)?
                };
                // The GPU GEMM writes BF16; round here so both backends see the same values.
                Ok(y.into_iter().map(round_bf16).collect())
            }
            Linear::F32 { .. } => {
                let x = dequantize_rows(a);
                if row_invariant {
                    self.forward_row_invariant(&x)
                } else {
                    self.forward(&x)
                }
            }
        }
    }

    /// `y = x W^T` for `x` [rows, in_dim] row-major; returns [rows, out_dim].
    pub fn forward(&self, x: &[f32]) -> Result<Vec<f32>> {
        let k = self.in_dim();
        debug_assert_eq!(x.len() % k, 0);
        let rows = x.len() / k;
        match self {
            Linear::F32 {
                bf16: Some(wb),
                n,
                k,
                ..
            } if rows <= SKINNY_MAX_ROWS => Ok(matmul_nt_skinny(x, wb, rows, *n, *k)),
            Linear::F32 { w, n, k, .. } => Ok(matmul_nt(x, w, rows, *n, *k)),
            Linear::Fp8 { w, ue8m0 } => {
                let a = quantize_fp8(x, w.k, *ue8m0, ScaleLayout::TokenMajor)?;
                self.forward_quantized(&a, false)
            }
        }
    }
}

/// The f32 values of token-major FP8 activations (`code * scale` per 128-channel block).
pub fn dequantize_rows(a: &Fp8Activations) -> Vec<f32> {
    let table = kernels::dtype::e4m3_decode_table();
    let k = a.channels;
    a.q.iter()
        .enumerate()
        .map(|(i, c)| table[usize::from(c.0)] * a.scale(i / k, (i % k) / 128))
        .collect()
}

/// `w` as BF16 when every value is exactly a BF16 value (the low 16 bits zero), else `None`.
fn bf16_copy(w: &[f32]) -> Option<Vec<bf16>> {
    w.iter().all(|v| v.to_bits() & 0xffff == 0).then(|| {
        w.iter()
            .map(|v| bf16::from_bits((v.to_bits() >> 16) as u16))
            .collect()
    })
}

/// Rounds an f32 to the nearest BF16 value (returned as f32).
pub fn round_bf16(v: f32) -> f32 {
    bf16::from_f32(v).to_f32()
}

/// Up to this many rows, [`matmul_nt`] streams the weights once ([`matmul_nt_skinny`]); above,
/// the `gemm` crate's blocked kernels win.
pub const SKINNY_MAX_ROWS: usize = 16;

/// `y[rows, n] = x[rows, k] w[n, k]^T` in f32 on all rayon threads: decode-sized inputs (up to
/// [`SKINNY_MAX_ROWS`] rows) with [`matmul_nt_skinny`], whose rows do not depend on each other,
/// larger ones with the `gemm` crate.
pub fn matmul_nt(x: &[f32], w: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
    if rows <= SKINNY_MAX_ROWS {
        return matmul_nt_skinny(x, w, rows, n, k);
    }
    let mut y = vec![0.0f32; rows * n];
    if n == 0 {
        return y;
    }
    let threads = rayon::current_num_threads();
    // Called from inside a parallel loop (the MoE's loop over experts), the loop already keeps
    // every thread busy: splitting each small product again only adds synchronization.
    let nested = rayon::current_thread_index().is_some();
    let parallelism = if threads > 1 && !nested && rows * n * k >= 1 << 16 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: y is [rows, n] (row stride n), x is [rows, k] (row stride k), w is [n, k] read as
    // its transpose [k, n] (row stride 1, column stride k); all indices stay in the buffers,
    // whose lengths the callers derive from the same dims.
    assert!(x.len() >= rows * k && w.len() >= n * k);
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::quantize_fp8_blocks;
    use kernels::reference::fp8_quant::block_scale;

    #[test]
    fn matmul_matches_the_definition() {
        let (rows, n, k) = (3, 5, 7);
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let y = matmul_nt(&x, &w, rows, n, k);
        for r in 0..rows {
            for c in 0..n {
                let want: f32 = (0..k).map(|j| x[r * k + j] * w[c * k + j]).sum();
                assert!((y[r * n + c] - want).abs() < 1e-5);
            }
        }
    }

    /// With `ue8m0` the activations are quantized with power-of-two scales (DeepSeek-V3.1's
    /// `act_quant` with `scale_fmt` set): the output is exactly the GEMM of those, and differs
    /// from the plain-scale output while staying close to it.
    #[test]
    fn ue8m0_rounds_activation_scales_up_to_powers_of_two() {
        let (rows, n, k) = (3, 16, 256);
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin() * 0.05).collect();
        let x: Vec<f32> = (0..rows * k)
            .map(|i| (i as f32 * 0.11).cos() * 3.0)
            .collect();
        let fp8 = quantize_fp8_blocks(&w, n, k);
        let layer = |ue8m0| {
            Linear::new("w", LinearWeight::Fp8(fp8.clone()), Precision::Fp8, ue8m0).unwrap()
        };
        let (plain, pow2) = (layer(false), layer(true));
        let a = quantize_fp8(&x, k, true, ScaleLayout::TokenMajor).unwrap();
        assert!(a.scales.iter().all(|s| s.log2().fract() == 0.0));
        let plain_scales = quantize_fp8(&x, k, false, ScaleLayout::TokenMajor)
            .unwrap()
            .scales;
        for (&p2, &s) in a.scales.iter().zip(&plain_scales) {
            assert!(p2 >= s && p2 < 2.0 * s && p2 == block_scale(s * 448.0, true));
        }
        assert_ne!(a.scales, plain_scales);
        let Linear::Fp8 { w: weights, .. } = &pow2 else {
            panic!("an FP8 layer")
        };
        let want: Vec<f32> = gemm_nt_f32(&a, weights)
            .unwrap()
            .into_iter()
            .map(round_bf16)
            .collect();
        let (y_plain, y_pow2) = (plain.forward(&x).unwrap(), pow2.forward(&x).unwrap());
        assert_eq!(y_pow2, want);
        assert_ne!(y_pow2, y_plain);
        let exact = matmul_nt(&x, &fp8.dequantize(), rows, n, k);
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
        let err = norm(&mut y_pow2.iter().zip(&exact).map(|(a, b)| a - b));
        let rel = err / norm(&mut exact.iter().copied());
        assert!(rel < 0.1, "relative error {rel}");
    }
}
