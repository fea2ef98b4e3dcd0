//! `y = x W^T` for few rows of `x` (decode steps, small experts): every weight row is read once
//! and dotted with all rows of `x` while it is in registers, so the product runs at the speed
//! the weights stream from memory. The `gemm` crate is made for many rows: below 16 rows (and
//! above one, where it has a matrix-vector path) it reads `W^T` column-strided and reaches a
//! fraction of the memory bandwidth.
//!
//! Every output element is one dot product in a fixed order that depends only on `k`: lane `l`
//! of [`LANES`] sums the products of elements `l, l + LANES, ...` (product then add, not fused),
//! the lanes are added in a fixed tree ([`finish`]), then the `k % LANES` remaining products in
//! order. So a row's result does not depend on the other rows of the call, nor on the thread
//! count.
//!
//! The weights may be f32 or BF16 ([`Elem`]): a BF16 weight is widened to f32 exactly (its bits
//! shifted up by 16) as it is loaded, so the arithmetic is the same f32 arithmetic on the same
//! values, bit for bit, while half the bytes stream from memory.

use half::bf16;
use rayon::prelude::*;

/// Independent partial sums per dot product (two AVX2 vectors, one AVX-512 vector).
const LANES: usize = 16;
/// Rows of `x` dotted with one loaded weight chunk.
const ROWS: usize = 4;
/// Weight rows dotted with one loaded chunk of each input row (AVX-512 path).
const WROWS: usize = 4;
/// Output columns per parallel task.
const COLS_PER_TASK: usize = 64;

/// A weight element type whose values are exactly f32 values.
pub trait Elem: Copy + Send + Sync + 'static {
    /// Stored as BF16 (the upper 16 bits of an f32).
    const BF16: bool;
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    const BF16: bool = false;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Elem for bf16 {
    const BF16: bool = true;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

/// `y[rows, n] = x[rows, k] w[n, k]^T`, the columns split over the rayon threads.
pub fn matmul_nt_skinny<W: Elem>(x: &[f32], w: &[W], rows: usize, n: usize, k: usize) -> Vec<f32> {
    assert!(x.len() >= rows * k && w.len() >= n * k);
    // Column blocks of y transposed ([n, rows]), so each task writes one contiguous chunk.
    let mut yt = vec![0.0f32; n * rows];
    let per_task = COLS_PER_TASK * rows;
    if rows > 0 {
        yt.par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(b, out)| {
                let j0 = b * COLS_PER_TASK;
                let cols = out.len() / rows;
                columns(x, &w[j0 * k..(j0 + cols) * k], rows, k, out);
            });
    }
    let mut y = vec![0.0f32; rows * n];
    for (j, col) in yt.chunks_exact(rows.max(1)).enumerate().take(n) {
        for (i, &v) in col.iter().enumerate() {
            y[i * n + j] = v;
        }
    }
    y
}

/// `out[j * rows + i] = x_i . w_j` for the weight rows `w` (`[cols, k]`).
fn columns<W: Elem>(x: &[f32], w: &[W], rows: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[cfg(dsv3_avx512)]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            unsafe { columns_avx512(x, w, rows, k, out) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { columns_avx2(x, w, rows, k, out) };
            return;
        }
    }
    for (wj, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(rows)) {
        for (i, v) in o.iter_mut().enumerate() {
            *v = dots(&[&x[i * k..][..k]], wj)[0];
        }
    }
}

/// [`columns`] with [`dots_avx2`], [`ROWS`] rows of `x` per loaded weight chunk. The row group
/// is the outer loop: it stays in L1 while the task's weight rows (`COLS_PER_TASK` of them, in
/// L2 after the first group) stream past it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn columns_avx2<W: Elem>(x: &[f32], w: &[W], rows: usize, k: usize, out: &mut [f32]) {
    let mut i = 0;
    while i + ROWS <= rows {
        let xs: [&[f32]; ROWS] = std::array::from_fn(|r| &x[(i + r) * k..][..k]);
        for (wj, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(rows)) {
            // SAFETY: this function runs only where AVX2 is present.
            o[i..i + ROWS].copy_from_slice(&unsafe { dots_avx2(&xs, wj) });
        }
        i += ROWS;
    }
    while i < rows {
        let xs = [&x[i * k..][..k]];
        for (wj, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(rows)) {
            // SAFETY: as above.
            o[i] = unsafe { dots_avx2(&xs, wj) }[0];
        }
        i += 1;
    }
}

/// [`columns`] with the 16 lanes in one AVX-512 register, register-blocked: [`WROWS`] weight
/// rows x [`ROWS`] input rows per pass, so every loaded weight chunk serves several input rows
/// and every loaded input chunk several weight rows. Each output element still gets exactly the
/// products and adds of [`dots`], lane for lane.
#[cfg(all(target_arch = "x86_64", dsv3_avx512))]
#[target_feature(enable = "avx512f")]
unsafe fn columns_avx512<W: Elem>(x: &[f32], w: &[W], rows: usize, k: usize, out: &mut [f32]) {
    let mut i = 0;
    // SAFETY (all calls): this function runs only where AVX-512F is present.
    while i + ROWS <= rows {
        unsafe { row_group_avx512::<ROWS, W>(x, w, i, rows, k, out) };
        i += ROWS;
    }
    match rows - i {
        1 => unsafe { row_group_avx512::<1, W>(x, w, i, rows, k, out) },
        2 => unsafe { row_group_avx512::<2, W>(x, w, i, rows, k, out) },
        3 => unsafe { row_group_avx512::<3, W>(x, w, i, rows, k, out) },
        _ => {}
    }
}

/// Rows `i..i + R` of `x` against every weight row of `w`, into `out` (`[cols, rows]`).
#[cfg(all(target_arch = "x86_64", dsv3_avx512))]
#[target_feature(enable = "avx512f")]
unsafe fn row_group_avx512<const R: usize, W: Elem>(
    x: &[f32],
    w: &[W],
    i: usize,
    rows: usize,
    k: usize,
    out: &mut [f32],
) {
    let xs: [&[f32]; R] = std::array::from_fn(|r| &x[(i + r) * k..][..k]);
    let cols = out.len() / rows;
    let mut j = 0;
    while j + WROWS <= cols {
        let ws: [&[W]; WROWS] = std::array::from_fn(|c| &w[(j + c) * k..][..k]);
        // SAFETY: this function runs only where AVX-512F is present.
        let d = unsafe { dots_avx512::<R, WROWS, W>(&xs, &ws) };
        for (c, dc) in d.iter().enumerate() {
            out[(j + c) * rows + i..][..R].copy_from_slice(dc);
        }
        j += WROWS;
    }
    while j < cols {
        // SAFETY: as above.
        let d = unsafe { dots_avx512::<R, 1, W>(&xs, &[&w[j * k..][..k]]) };
        out[j * rows + i..][..R].copy_from_slice(&d[0]);
        j += 1;
    }
}

/// `xs[r] . w` for each `r`, in the order the module documents (the reference for
/// [`dots_avx2`], and the path of CPUs without AVX2).
fn dots<const R: usize, W: Elem>(xs: &[&[f32]; R], w: &[W]) -> [f32; R] {
    let k = w.len();
    let full = k - k % LANES;
    let mut acc = [[0.0f32; LANES]; R];
    for c in (0..full).step_by(LANES) {
        for (a, x) in acc.iter_mut().zip(xs) {
            for l in 0..LANES {
                a[l] += x[c + l] * w[c + l].to_f32();
            }
        }
    }
    std::array::from_fn(|r| finish(&acc[r], xs[r], w, full))
}

/// `xs[r] . ws[c]` for every `r`, `c`: [`dots`] with the lanes in one AVX-512 register.
#[cfg(all(target_arch = "x86_64", dsv3_avx512))]
#[target_feature(enable = "avx512f")]
// Compiled only where the compiler has the AVX-512 intrinsics (build.rs sets `dsv3_avx512`).
#[allow(clippy::incompatible_msrv)]
unsafe fn dots_avx512<const R: usize, const C: usize, W: Elem>(
    xs: &[&[f32]; R],
    ws: &[&[W]; C],
) -> [[f32; R]; C] {
    use std::arch::x86_64::{
        __m256i, __m512, _mm256_loadu_si256, _mm512_add_ps, _mm512_castsi512_ps,
        _mm512_cvtepu16_epi32, _mm512_loadu_ps, _mm512_mul_ps, _mm512_setzero_ps,
        _mm512_slli_epi32, _mm512_storeu_ps,
    };
    let k = ws[0].len();
    let full = k - k % LANES;
    for x in xs {
        assert!(x.len() >= k);
    }
    for w in ws {
        assert!(w.len() >= k);
    }
    let mut acc: [[__m512; R]; C] = [[_mm512_setzero_ps(); R]; C];
    let mut c = 0;
    while c < full {
        // SAFETY: c + LANES <= full <= k <= every slice's length (asserted above); a BF16
        // weight chunk is 16 u16 (32 bytes), an f32 one 16 f32.
        unsafe {
            let mut wv = [_mm512_setzero_ps(); C];
            for j in 0..C {
                let p = ws[j].as_ptr().add(c);
                wv[j] = if W::BF16 {
                    let raw = _mm256_loadu_si256(p.cast::<__m256i>());
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
                } else {
                    _mm512_loadu_ps(p.cast::<f32>())
                };
            }
            for r in 0..R {
                let xv = _mm512_loadu_ps(xs[r].as_ptr().add(c));
                for j in 0..C {
                    acc[j][r] = _mm512_add_ps(acc[j][r], _mm512_mul_ps(xv, wv[j]));
                }
            }
        }
        c += LANES;
    }
    let mut res = [[0.0f32; R]; C];
    for j in 0..C {
        for r in 0..R {
            let mut a = [0.0f32; LANES];
            // SAFETY: `a` holds 16 f32, one 16-lane store.
            unsafe { _mm512_storeu_ps(a.as_mut_ptr(), acc[j][r]) };
            res[j][r] = finish(&a, xs[r], ws[j], full);
        }
    }
    res
}

/// [`dots`] with the lanes in two AVX2 registers: the same products and adds per lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dots_avx2<const R: usize, W: Elem>(xs: &[&[f32]; R], w: &[W]) -> [f32; R] {
    use std::arch::x86_64::{
        __m128i, _mm256_add_ps, _mm256_castsi256_ps, _mm256_cvtepu16_epi32, _mm256_loadu_ps,
        _mm256_mul_ps, _mm256_setzero_ps, _mm256_slli_epi32, _mm256_storeu_ps, _mm_loadu_si128,
    };
    let k = w.len();
    let full = k - k % LANES;
    for x in xs {
        assert!(x.len() >= k);
    }
    let mut lo = [_mm256_setzero_ps(); R];
    let mut hi = [_mm256_setzero_ps(); R];
    let mut c = 0;
    while c < full {
        // SAFETY: c + LANES <= full <= k <= every slice's length (asserted above).
        unsafe {
            let (w_lo, w_hi) = if W::BF16 {
                let p = w.as_ptr().add(c).cast::<__m128i>();
                let widen =
                    |raw| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)));
                (widen(_mm_loadu_si128(p)), widen(_mm_loadu_si128(p.add(1))))
            } else {
                let p = w.as_ptr().add(c).cast::<f32>();
                (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
            };
            for r in 0..R {
                let x_lo = _mm256_loadu_ps(xs[r].as_ptr().add(c));
                let x_hi = _mm256_loadu_ps(xs[r].as_ptr().add(c + 8));
                lo[r] = _mm256_add_ps(lo[r], _mm256_mul_ps(x_lo, w_lo));
                hi[r] = _mm256_add_ps(hi[r], _mm256_mul_ps(x_hi, w_hi));
            }
        }
        c += LANES;
    }
    std::array::from_fn(|r| {
        let mut a = [0.0f32; LANES];
        // SAFETY: `a` holds 16 f32, two 8-lane stores.
        unsafe {
            _mm256_storeu_ps(a.as_mut_ptr(), lo[r]);
            _mm256_storeu_ps(a.as_mut_ptr().add(8), hi[r]);
        }
        finish(&a, xs[r], w, full)
    })
}

/// The lanes added in a fixed tree, then the products past the last full lane group in order.
#[inline(always)]
fn finish<W: Elem>(a: &[f32; LANES], x: &[f32], w: &[W], full: usize) -> f32 {
    let mut h = [0.0f32; 8];
    for (l, v) in h.iter_mut().enumerate() {
        *v = a[l] + a[l + 8];
    }
    let mut s = ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]));
    for c in full..w.len() {
        s += x[c] * w[c].to_f32();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_is_independent_of_the_others_and_close_to_f64() {
        let (n, k) = (70, 37);
        let x: Vec<f32> = (0..9 * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let all = matmul_nt_skinny(&x, &w, 9, n, k);
        for r in 0..9 {
            let alone = matmul_nt_skinny(&x[r * k..][..k], &w, 1, n, k);
            for j in 0..n {
                assert_eq!(
                    all[r * n + j].to_bits(),
                    alone[j].to_bits(),
                    "row {r} col {j}"
                );
                let want: f64 = (0..k)
                    .map(|c| f64::from(x[r * k + c]) * f64::from(w[j * k + c]))
                    .sum();
                assert!((f64::from(alone[j]) - want).abs() < 1e-5, "row {r} col {j}");
            }
        }
    }

    /// BF16 weights give the bits of the same weights widened to f32, on every path.
    #[test]
    fn bf16_weights_match_their_f32_values() {
        let (rows, n, k) = (7, 37, 85);
        let x: Vec<f32> = (0..rows * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let wb: Vec<bf16> = (0..n * k)
            .map(|i| bf16::from_f32((i as f32 * 0.11).cos()))
            .collect();
        let wf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let a = matmul_nt_skinny(&x, &wb, rows, n, k);
        let b = matmul_nt_skinny(&x, &wf, rows, n, k);
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        // Every path the CPU has gives the same bits: AVX2 here, the portable reference below.
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            let mut out = vec![0.0f32; n * rows];
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { columns_avx2(&x, &wb, rows, k, &mut out) };
            for r in 0..rows {
                for j in 0..n {
                    assert_eq!(out[j * rows + r].to_bits(), a[r * n + j].to_bits());
                }
            }
            let mut out = vec![0.0f32; n * rows];
            // SAFETY: as above.
            unsafe { columns_avx2(&x, &wf, rows, k, &mut out) };
            for r in 0..rows {
                for j in 0..n {
                    assert_eq!(out[j * rows + r].to_bits(), b[r * n + j].to_bits());
                }
            }
        }
        for r in 0..rows {
            for j in 0..n {
                let d = dots(&[&x[r * k..][..k]], &wb[j * k..][..k])[0];
                assert_eq!(d.to_bits(), a[r * n + j].to_bits(), "row {r} col {j}");
            }
        }
    }
}
