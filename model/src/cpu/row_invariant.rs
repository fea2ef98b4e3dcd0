//! The FP8 block-scaled product with a guarantee the batched reference does not give: every
//! output row depends on its own activation row alone, whatever the number of rows and their
//! order. Expert parallelism needs it: the rows an expert multiplies, and how many there are,
//! depend on how the batch is spread over the ranks, and the world size must not change a bit
//! of the result.
//!
//! The arithmetic is the reference's (spec §4): per 128-channel block an f32 partial of the exact
//! e4m3 products, promoted as `total += partial * s_a * s_w`. The partial is summed here in a
//! fixed order (eight interleaved lanes, then a fixed tree), so it is the same for a row alone
//! or inside any batch. The `gemm` crate the batched path uses picks its kernel from the shape,
//! which gives no such guarantee for sums that round.

use fp8_gemm::reference::Fp8Weights;
use kernels::dtype::e4m3_decode_table;
use kernels::reference::fp8_quant::Fp8Activations;
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Channels per scale block (activations and weights).
const BLOCK: usize = 128;
/// Weight rows decoded together: enough work per rayon task, little memory.
const COLS_PER_TASK: usize = 32;
const LANES: usize = 8;

/// `y[rows, n] = a w^T` in f32 (before any output rounding), each row independent of the others.
pub fn fp8_matmul_row_invariant(a: &Fp8Activations, w: &Fp8Weights) -> Result<Vec<f32>> {
    let (rows, n, k) = (a.tokens, w.n, w.k);
    if a.channels != k || a.q.len() != rows * k || k % BLOCK != 0 {
        return Err(ModelError::request(format!(
            "fp8 product: activations [{rows}, {}] ({} codes) do not match weights [{n}, {k}]",
            a.channels,
            a.q.len()
        )));
    }
    let table = e4m3_decode_table();
    let a_f32: Vec<f32> = a.q.iter().map(|c| table[usize::from(c.0)]).collect();
    let blocks = k / BLOCK;
    // Column-major tasks: each decodes its weight rows once and serves every activation row.
    let columns: Vec<Vec<f32>> = (0..n.div_ceil(COLS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let c0 = task * COLS_PER_TASK;
            let cols = (n - c0).min(COLS_PER_TASK);
            let w_f32: Vec<f32> = w.q[c0 * k..(c0 + cols) * k]
                .iter()
                .map(|c| table[usize::from(c.0)])
                .collect();
            let mut out = vec![0.0f32; rows * cols];
            for r in 0..rows {
                let x = &a_f32[r * k..][..k];
                for c in 0..cols {
                    let wr = &w_f32[c * k..][..k];
                    let mut total = 0.0f32;
                    for kb in 0..blocks {
                        let span = kb * BLOCK..(kb + 1) * BLOCK;
                        let partial = dot(&x[span.clone()], &wr[span]);
                        total += partial * a.scale(r, kb) * w.scale(c0 + c, kb);
                    }
                    out[r * cols + c] = total;
                }
            }
            out
        })
        .collect();
    let mut y = vec![0.0f32; rows * n];
    for (task, out) in columns.into_iter().enumerate() {
        let c0 = task * COLS_PER_TASK;
        let cols = (n - c0).min(COLS_PER_TASK);
        for r in 0..rows {
            y[r * n + c0..][..cols].copy_from_slice(&out[r * cols..][..cols]);
        }
    }
    Ok(y)
}

/// `sum a[i] b[i]` over one block in a fixed order: eight interleaved lane sums, then
/// `((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))`. Plain multiplies and adds (Rust does
/// not contract them into FMAs), so the result depends on the values alone.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for i in 0..LANES {
            lanes[i] += ca[i] * cb[i];
        }
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fp8_gemm::reference::{gemm_nt_f32, quantize_weights};
    use kernels::reference::{quantize_fp8, ScaleLayout};

    fn operands(rows: usize, n: usize, k: usize) -> (Fp8Activations, Fp8Weights) {
        let x: Vec<f32> = (0..rows * k)
            .map(|i| (i as f32 * 0.37).sin() * (1.0 + (i % 17) as f32))
            .collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos() * 0.05).collect();
        let a = quantize_fp8(&x, k, false, ScaleLayout::TokenMajor).unwrap();
        (a, quantize_weights(&w, n, k).unwrap())
    }

    fn row(a: &Fp8Activations, r: usize) -> Fp8Activations {
        let (k, blocks) = (a.channels, a.blocks());
        Fp8Activations {
            q: a.q[r * k..][..k].to_vec(),
            scales: a.scales[r * blocks..][..blocks].to_vec(),
            tokens: 1,
            channels: k,
            layout: ScaleLayout::TokenMajor,
        }
    }

    #[test]
    fn each_row_equals_the_row_alone_and_stays_close_to_the_reference() {
        let (rows, n, k) = (37, 70, 384);
        let (a, w) = operands(rows, n, k);
        let y = fp8_matmul_row_invariant(&a, &w).unwrap();
        for r in 0..rows {
            let alone = fp8_matmul_row_invariant(&row(&a, r), &w).unwrap();
            assert_eq!(&y[r * n..][..n], &alone[..], "row {r}");
        }
        // Same products and promotion as the batched reference; only the summation order of
        // each 128-term partial differs, so the two agree to f32 rounding.
        let reference = gemm_nt_f32(&a, &w).unwrap();
        for (i, (&got, &want)) in y.iter().zip(&reference).enumerate() {
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "element {i}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let (a, _) = operands(2, 4, 256);
        let (_, w) = operands(2, 4, 128);
        let err = fp8_matmul_row_invariant(&a, &w).unwrap_err().to_string();
        assert!(err.contains("do not match weights [4, 128]"), "{err}");
    }
}
