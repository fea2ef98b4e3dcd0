//! The block-scaled FP8 GEMM of spec §4 in plain Rust:
//!
//! `y[m,n] = sum over K blocks b of sa[m,b] * sw[n/128,b] * (sum_{k in b} qa[m,k] * qw[n,k])`,
//! each block's partial sum accumulated in f32 and promoted (scaled and added) into an f32 total;
//! the output is that total rounded once to BF16 (after adding the BF16 residual, if any).
//!
//! Three implementations of the same arithmetic:
//! - [`gemm_nt_literal`]: the formula as written, one loop per index (small shapes, tests).
//! - [`gemm_nt_f64`]: the exact dequantized product in f64 with, per element, the sum of |terms|
//!   (the scale of the rounding error any f32 implementation may make). Tests compare against it.
//! - [`gemm_nt`] / [`gemm_nt_f32`]: the fast path the model's CPU backend uses. Per output tile
//!   and K block it decodes the e4m3 codes to f32 (exact), multiplies the blocks with the `gemm`
//!   crate, and promotes the f32 partial with the two scales, exactly as the literal version does;
//!   tiles run in parallel on rayon. Only the order of the 128 products inside a partial differs.
//!
//! Operands: activations are a `kernels` [`Fp8Activations`] (either scale layout); weights are
//! [`Fp8Weights`] in the checkpoint's layout. The grouped variants ([`grouped_contiguous`],
//! [`grouped_masked`]) apply the dense product to each group's rows.

use half::bf16;
use kernels::dtype::{e4m3_decode_table, e4m3_from_f32, e4m3_to_f32, E4m3, E4M3_MAX};
use kernels::error::{check_len, Error, Result};
use kernels::reference::fp8_quant::Fp8Activations;
use rayon::prelude::*;

use crate::layout::{weight_scale_len, K_BLOCK, W_BLOCK};

const OP: &str = "fp8_gemm";

/// FP8 weights `[N, K]` with one f32 scale per 128x128 block, `scales[(n/128) * (K/128) + k/128]`
/// (a checkpoint's `weight` and `weight_scale_inv`).
#[derive(Clone, Debug, PartialEq)]
pub struct Fp8Weights {
    pub q: Vec<E4m3>,
    pub scales: Vec<f32>,
    pub n: usize,
    pub k: usize,
}

impl Fp8Weights {
    /// Checks the lengths against `[n, k]`; `k` must be a multiple of 128.
    pub fn new(q: Vec<E4m3>, scales: Vec<f32>, n: usize, k: usize) -> Result<Self> {
        check_k(k)?;
        let len = n
            .checked_mul(k)
            .ok_or_else(|| Error::shape(OP, format!("weights [{n}, {k}] overflow")))?;
        check_len(OP, "weight codes", q.len(), len)?;
        check_len(OP, "weight scales", scales.len(), weight_scale_len(n, k))?;
        Ok(Fp8Weights { q, scales, n, k })
    }

    pub fn k_blocks(&self) -> usize {
        self.k / K_BLOCK
    }

    /// Scale of weight row `row`, K block `kb`.
    pub fn scale(&self, row: usize, kb: usize) -> f32 {
        self.scales[(row / W_BLOCK) * self.k_blocks() + kb]
    }
}

/// Quantizes `[n, k]` weights per 128x128 block the way FP8 checkpoints are made:
/// scale = max(amax, 1e-4) / 448, q = e4m3(w / scale) (round to nearest even, saturating).
pub fn quantize_weights(w: &[f32], n: usize, k: usize) -> Result<Fp8Weights> {
    check_k(k)?;
    check_len(OP, "weights", w.len(), n * k)?;
    let kb_count = k / K_BLOCK;
    let mut scales = vec![0.0f32; weight_scale_len(n, k)];
    for nb in 0..n.div_ceil(W_BLOCK) {
        for kb in 0..kb_count {
            let amax = (nb * W_BLOCK..((nb + 1) * W_BLOCK).min(n))
                .flat_map(|r| &w[r * k + kb * K_BLOCK..r * k + (kb + 1) * K_BLOCK])
                .fold(0.0f32, |m, v| m.max(v.abs()));
            scales[nb * kb_count + kb] = amax.max(1e-4) / E4M3_MAX;
        }
    }
    let q = w
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let (r, c) = (i / k, i % k);
            E4m3(e4m3_from_f32(
                v / scales[(r / W_BLOCK) * kb_count + c / K_BLOCK],
            ))
        })
        .collect();
    Fp8Weights::new(q, scales, n, k)
}

fn check_k(k: usize) -> Result<()> {
    if k == 0 || k % K_BLOCK != 0 {
        return Err(Error::shape(
            OP,
            format!("K = {k} must be a positive multiple of {K_BLOCK}"),
        ));
    }
    Ok(())
}

fn check_operands(a: &Fp8Activations, b: &Fp8Weights) -> Result<()> {
    check_k(a.channels)?;
    if a.channels != b.k {
        return Err(Error::shape(
            OP,
            format!(
                "activations have K = {} but weights have K = {}",
                a.channels, b.k
            ),
        ));
    }
    check_len(OP, "activation codes", a.q.len(), a.tokens * a.channels)?;
    check_len(
        OP,
        "activation scales",
        a.scales.len(),
        Fp8Activations::scale_len(a.tokens, a.channels, a.layout),
    )
}

fn check_residual(residual: Option<&[bf16]>, m: usize, n: usize) -> Result<()> {
    match residual {
        Some(r) => check_len(OP, "residual", r.len(), m * n),
        None => Ok(()),
    }
}

/// The spec's formula with one loop per index: f32 partial per K block (products summed in K
/// order), promoted into the f32 total in block order. Returns the f32 totals `[M, N]`.
pub fn gemm_nt_literal(a: &Fp8Activations, b: &Fp8Weights) -> Result<Vec<f32>> {
    check_operands(a, b)?;
    let (m_rows, n_cols, k) = (a.tokens, b.n, b.k);
    let mut y = vec![0.0f32; m_rows * n_cols];
    for m in 0..m_rows {
        for n in 0..n_cols {
            let mut total = 0.0f32;
            for kb in 0..k / K_BLOCK {
                let mut partial = 0.0f32;
                for kk in kb * K_BLOCK..(kb + 1) * K_BLOCK {
                    partial += e4m3_to_f32(a.q[m * k + kk].0) * e4m3_to_f32(b.q[n * k + kk].0);
                }
                total += partial * a.scale(m, kb) * b.scale(n, kb);
            }
            y[m * n_cols + n] = total;
        }
    }
    Ok(y)
}

/// The exact dequantized product in f64, and per element the sum of the absolute values of its
/// terms (sum_k |sa qa| |sw qw|), the yardstick for an implementation's accumulation error.
pub fn gemm_nt_f64(a: &Fp8Activations, b: &Fp8Weights) -> Result<(Vec<f64>, Vec<f64>)> {
    check_operands(a, b)?;
    let (m_rows, n_cols, k) = (a.tokens, b.n, b.k);
    let deq_a: Vec<f64> = (0..m_rows * k)
        .map(|i| f64::from(e4m3_to_f32(a.q[i].0)) * f64::from(a.scale(i / k, i % k / K_BLOCK)))
        .collect();
    let deq_b: Vec<f64> = (0..n_cols * k)
        .map(|i| f64::from(e4m3_to_f32(b.q[i].0)) * f64::from(b.scale(i / k, i % k / K_BLOCK)))
        .collect();
    let mut y = vec![0.0f64; m_rows * n_cols];
    let mut abs = vec![0.0f64; m_rows * n_cols];
    y.par_chunks_mut(n_cols.max(1))
        .zip(abs.par_chunks_mut(n_cols.max(1)))
        .enumerate()
        .for_each(|(m, (y_row, abs_row))| {
            let a_row = &deq_a[m * k..(m + 1) * k];
            for n in 0..n_cols {
                let b_row = &deq_b[n * k..(n + 1) * k];
                let (mut s, mut sa) = (0.0f64, 0.0f64);
                for (x, w) in a_row.iter().zip(b_row) {
                    s += x * w;
                    sa += (x * w).abs();
                }
                y_row[n] = s;
                abs_row[n] = sa;
            }
        });
    Ok((y, abs))
}

/// Output tile of the fast path: rows x columns computed by one rayon task. 256 x 512 makes each
/// per-block `gemm` call large enough (16.8M multiply-adds) that its fixed cost is small, keeps the
/// tile's partial and total (512 KiB each) in L2, and still gives N/512 tasks for a decode row.
const TILE_M: usize = 256;
const TILE_N: usize = 512;

/// The fast CPU path: f32 totals `[M, N]` (see the module doc for how it matches the literal
/// formula).
pub fn gemm_nt_f32(a: &Fp8Activations, b: &Fp8Weights) -> Result<Vec<f32>> {
    check_operands(a, b)?;
    let (m_rows, n_cols) = (a.tokens, b.n);
    let mut y = vec![0.0f32; m_rows * n_cols];
    if m_rows == 0 || n_cols == 0 {
        return Ok(y);
    }
    let m_tiles = m_rows.div_ceil(TILE_M);
    let n_tiles = n_cols.div_ceil(TILE_N);
    let tiles: Vec<(usize, Vec<f32>)> = (0..m_tiles * n_tiles)
        .into_par_iter()
        .map(|t| (t, tile_totals(a, b, t / n_tiles, t % n_tiles)))
        .collect();
    for (t, totals) in tiles {
        let (m0, n0) = ((t / n_tiles) * TILE_M, (t % n_tiles) * TILE_N);
        let cols = (n_cols - n0).min(TILE_N);
        for (r, row) in totals.chunks_exact(cols).enumerate() {
            y[(m0 + r) * n_cols + n0..][..cols].copy_from_slice(row);
        }
    }
    Ok(y)
}

/// Totals of one output tile, `[rows, cols]` row-major.
fn tile_totals(a: &Fp8Activations, b: &Fp8Weights, mt: usize, nt: usize) -> Vec<f32> {
    let k = b.k;
    let (m0, n0) = (mt * TILE_M, nt * TILE_N);
    let rows = (a.tokens - m0).min(TILE_M);
    let cols = (b.n - n0).min(TILE_N);
    let mut a_blk = vec![0.0f32; rows * K_BLOCK];
    let mut b_blk = vec![0.0f32; cols * K_BLOCK];
    let mut partial = vec![0.0f32; rows * cols];
    let mut total = vec![0.0f32; rows * cols];
    let mut sw_cols = vec![0.0f32; cols];
    let decode = e4m3_decode_table();
    for kb in 0..k / K_BLOCK {
        // e4m3 -> f32 is exact, so the partial below is the exact products summed in f32.
        for r in 0..rows {
            let src = &a.q[(m0 + r) * k + kb * K_BLOCK..][..K_BLOCK];
            for (d, s) in a_blk[r * K_BLOCK..][..K_BLOCK].iter_mut().zip(src) {
                *d = decode[usize::from(s.0)];
            }
        }
        for c in 0..cols {
            let src = &b.q[(n0 + c) * k + kb * K_BLOCK..][..K_BLOCK];
            for (d, s) in b_blk[c * K_BLOCK..][..K_BLOCK].iter_mut().zip(src) {
                *d = decode[usize::from(s.0)];
            }
        }
        // SAFETY: partial is [rows, cols] (row stride cols), a_blk [rows, 128] (row stride 128),
        // b_blk [cols, 128] read as its transpose [128, cols] (row stride 1, column stride 128);
        // every index stays inside the three buffers.
        unsafe {
            gemm::gemm(
                rows,
                cols,
                K_BLOCK,
                partial.as_mut_ptr(),
                1,
                cols as isize,
                false,
                a_blk.as_ptr(),
                1,
                K_BLOCK as isize,
                b_blk.as_ptr(),
                K_BLOCK as isize,
                1,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        // Promotion, as in the literal formula: total += partial * sa * sw (left to right). The
        // scales are gathered first so the inner loop is plain vectorizable arithmetic.
        for (c, sw) in sw_cols.iter_mut().enumerate() {
            *sw = b.scale(n0 + c, kb);
        }
        for r in 0..rows {
            let sa = a.scale(m0 + r, kb);
            let (t_row, p_row) = (&mut total[r * cols..][..cols], &partial[r * cols..][..cols]);
            for ((t, &p), &sw) in t_row.iter_mut().zip(p_row).zip(&sw_cols) {
                *t += p * sa * sw;
            }
        }
    }
    total
}

/// The full op: BF16 `[M, N]` = round(totals + residual), the residual added in f32 before the
/// one rounding.
pub fn gemm_nt(a: &Fp8Activations, b: &Fp8Weights, residual: Option<&[bf16]>) -> Result<Vec<bf16>> {
    check_residual(residual, a.tokens, b.n)?;
    let y = gemm_nt_f32(a, b)?;
    Ok(round_output(&y, residual))
}

/// BF16 rounding of the f32 totals, adding the residual first when there is one.
pub fn round_output(y: &[f32], residual: Option<&[bf16]>) -> Vec<bf16> {
    match residual {
        Some(r) => y
            .iter()
            .zip(r)
            .map(|(v, r)| bf16::from_f32(v + r.to_f32()))
            .collect(),
        None => y.iter().map(|&v| bf16::from_f32(v)).collect(),
    }
}

/// Rows `start..end` of `a` as activations of their own (block-major scales are re-laid out).
pub fn activation_rows(a: &Fp8Activations, start: usize, end: usize) -> Fp8Activations {
    let tokens = end - start;
    let layout = a.layout;
    let mut scales = vec![0.0f32; Fp8Activations::scale_len(tokens, a.channels, layout)];
    for t in 0..tokens {
        for kb in 0..a.blocks() {
            scales[Fp8Activations::scale_index(tokens, a.channels, layout, t, kb)] =
                a.scale(start + t, kb);
        }
    }
    Fp8Activations {
        q: a.q[start * a.channels..end * a.channels].to_vec(),
        scales,
        tokens,
        channels: a.channels,
        layout,
    }
}

/// Grouped contiguous (MoE prefill): row `r` of `a` is multiplied by `b[m_indices[r]]`; rows with
/// index -1 are padding and stay zero in the result. Returns f32 totals `[M, N]`.
pub fn grouped_contiguous(
    a: &Fp8Activations,
    b: &[Fp8Weights],
    m_indices: &[i32],
) -> Result<Vec<f32>> {
    check_len(OP, "m_indices", m_indices.len(), a.tokens)?;
    let n = check_groups(b)?;
    if let Some((r, &g)) = m_indices
        .iter()
        .enumerate()
        .find(|(_, &g)| g < -1 || g >= b.len() as i32)
    {
        return Err(Error::index(
            OP,
            format!("row {r} has group index {g}; there are {} groups", b.len()),
        ));
    }
    let mut y = vec![0.0f32; a.tokens * n];
    // Each run of equal indices is one dense product.
    let mut start = 0;
    while start < a.tokens {
        let g = m_indices[start];
        let end = (start..a.tokens)
            .find(|&r| m_indices[r] != g)
            .unwrap_or(a.tokens);
        if g >= 0 {
            let part = gemm_nt_f32(&activation_rows(a, start, end), &b[g as usize])?;
            y[start * n..end * n].copy_from_slice(&part);
        }
        start = end;
    }
    Ok(y)
}

/// Grouped masked (MoE decode): `a[g]` is group g's `[M_max, K]` activations, only its first
/// `masked_m[g]` rows are valid; the rest stay zero in the result. Returns f32 `[G, M_max, N]`.
pub fn grouped_masked(
    a: &[Fp8Activations],
    b: &[Fp8Weights],
    masked_m: &[usize],
) -> Result<Vec<f32>> {
    let n = check_groups(b)?;
    check_len(OP, "activation groups", a.len(), b.len())?;
    check_len(OP, "masked_m", masked_m.len(), b.len())?;
    let m_max = a.first().map_or(0, |x| x.tokens);
    let mut y = vec![0.0f32; b.len() * m_max * n];
    for (g, ((ag, bg), &valid)) in a.iter().zip(b).zip(masked_m).enumerate() {
        if ag.tokens != m_max {
            return Err(Error::shape(
                OP,
                format!("group {g} has {} rows, group 0 has {m_max}", ag.tokens),
            ));
        }
        if valid > m_max {
            return Err(Error::index(
                OP,
                format!("masked_m[{g}] = {valid} exceeds M_max = {m_max}"),
            ));
        }
        if valid > 0 {
            let part = gemm_nt_f32(&activation_rows(ag, 0, valid), bg)?;
            y[g * m_max * n..][..valid * n].copy_from_slice(&part);
        }
    }
    Ok(y)
}

/// Every group's weights must have the same shape; returns N.
fn check_groups(b: &[Fp8Weights]) -> Result<usize> {
    let Some(first) = b.first() else {
        return Err(Error::shape(OP, "no weight groups"));
    };
    if let Some((g, w)) = b
        .iter()
        .enumerate()
        .find(|(_, w)| (w.n, w.k) != (first.n, first.k))
    {
        return Err(Error::shape(
            OP,
            format!(
                "group {g} weights are [{}, {}], group 0 [{}, {}]",
                w.n, w.k, first.n, first.k
            ),
        ));
    }
    Ok(first.n)
}
