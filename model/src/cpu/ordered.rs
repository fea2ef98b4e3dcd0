//! `c = a b` in f32 where every element is summed in one fixed order: the same value, bit for
//! bit, as the sequential dot product `sum_k a[i][k] * b[k][j]` (k ascending, starting from
//! zero, a product then an add, never fused) that the Rust references of the absorbed attention
//! compute one element at a time.
//!
//! The speed comes from register tiles (`MR` rows x `NR` columns of accumulators kept across
//! the whole k loop, each loaded `b` value used `MR` times) and from vectorizing across
//! independent output elements, never across the k of one element, so the order each element
//! sees does not change. The `gemm` crate (used for the linear layers) splits k into blocks and
//! fuses multiply-adds, which is why this module exists instead of calling it here.

/// Rows of `c` per register tile (AVX2: 16 ymm registers).
const MR: usize = 4;
/// Columns of `c` per register tile (two AVX2 vectors).
const NR: usize = 16;
/// Rows of `c` per register tile with AVX-512 (32 zmm registers: 16 accumulators).
const MR_512: usize = 8;
/// Rows per tile with AVX-512 where `c` is narrower than [`NR_512`] (one zmm per row: the
/// attention scores over 16 heads).
const MR_512_NARROW: usize = 16;
/// Columns of `c` per register tile with AVX-512 (two zmm vectors).
const NR_512: usize = 32;

/// `c[i * n + j] = sum_{kk < k} a(i)[kk] * b(kk)[j]` for `i < m`, `j < n`, summed in order of
/// `kk` from 0. `a(i)` must have at least `k` elements and `b(kk)` at least `n`; `c` is
/// `[m, n]` row-major and is overwritten.
pub fn ordered_matmul<'a, A, B>(m: usize, n: usize, k: usize, a: A, b: B, c: &mut [f32])
where
    A: Fn(usize) -> &'a [f32],
    B: Fn(usize) -> &'a [f32],
{
    assert!(c.len() >= m * n, "c holds {} of {m} x {n}", c.len());
    #[cfg(target_arch = "x86_64")]
    {
        #[cfg(dsv3_avx512)]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above); the body is the portable code.
            unsafe { matmul_avx512(m, n, k, &a, &b, c) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above); the body is the portable code.
            unsafe { matmul_avx2(m, n, k, &a, &b, c) };
            return;
        }
    }
    matmul_portable::<MR, NR>(m, n, k, &a, &b, c);
}

/// The portable body compiled with AVX2 enabled: the same scalar operations, 8 lanes at a time.
/// Only `avx2` is enabled, not `fma`, and Rust never contracts a product and an add anyway.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn matmul_avx2<'a>(
    m: usize,
    n: usize,
    k: usize,
    a: &impl Fn(usize) -> &'a [f32],
    b: &impl Fn(usize) -> &'a [f32],
    c: &mut [f32],
) {
    matmul_portable::<MR, NR>(m, n, k, a, b, c);
}

/// The portable body compiled with AVX-512F enabled, in larger tiles: the same scalar
/// operations per element, 16 lanes at a time (the tile shape only decides which independent
/// elements share a pass, never the order within one element).
#[cfg(all(target_arch = "x86_64", dsv3_avx512))]
#[target_feature(enable = "avx512f")]
unsafe fn matmul_avx512<'a>(
    m: usize,
    n: usize,
    k: usize,
    a: &impl Fn(usize) -> &'a [f32],
    b: &impl Fn(usize) -> &'a [f32],
    c: &mut [f32],
) {
    if n < NR_512 {
        matmul_portable::<MR_512_NARROW, NR>(m, n, k, a, b, c);
    } else {
        matmul_portable::<MR_512, NR_512>(m, n, k, a, b, c);
    }
}

#[inline(always)]
fn matmul_portable<'a, const TR: usize, const TW: usize>(
    m: usize,
    n: usize,
    k: usize,
    a: &impl Fn(usize) -> &'a [f32],
    b: &impl Fn(usize) -> &'a [f32],
    c: &mut [f32],
) {
    let mut i = 0;
    while i + TR <= m {
        let rows: [&[f32]; TR] = std::array::from_fn(|r| &a(i + r)[..k]);
        row_block::<TR, TW>(&rows, n, k, b, &mut c[i * n..(i + TR) * n]);
        i += TR;
    }
    while TR > MR && i + MR <= m {
        let rows: [&[f32]; MR] = std::array::from_fn(|r| &a(i + r)[..k]);
        row_block::<MR, TW>(&rows, n, k, b, &mut c[i * n..(i + MR) * n]);
        i += MR;
    }
    while i < m {
        let rows = [&a(i)[..k]];
        row_block::<1, TW>(&rows, n, k, b, &mut c[i * n..(i + 1) * n]);
        i += 1;
    }
}

/// The `R` rows `rows` of `c` (`c` is those rows, `[R, n]`): full `W`-wide tiles, then
/// 16-wide ones, then the remaining columns one at a time.
#[inline(always)]
fn row_block<'a, const R: usize, const W: usize>(
    rows: &[&[f32]; R],
    n: usize,
    k: usize,
    b: &impl Fn(usize) -> &'a [f32],
    c: &mut [f32],
) {
    let mut j = 0;
    while j + W <= n {
        let acc = tile::<R, W>(rows, k, b, j);
        store(&acc, c, n, j);
        j += W;
    }
    while j + NR <= n {
        let acc = tile::<R, NR>(rows, k, b, j);
        store(&acc, c, n, j);
        j += NR;
    }
    while j < n {
        let acc = tile::<R, 1>(rows, k, b, j);
        store(&acc, c, n, j);
        j += 1;
    }
}

/// Accumulators of one `R x W` tile at column `j0`, k ascending.
// `kk` indexes both operands (a row of `b` and one element of each `rows[r]`).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn tile<'a, const R: usize, const W: usize>(
    rows: &[&[f32]; R],
    k: usize,
    b: &impl Fn(usize) -> &'a [f32],
    j0: usize,
) -> [[f32; W]; R] {
    let mut acc = [[0.0f32; W]; R];
    for kk in 0..k {
        let bk: &[f32; W] = b(kk)[j0..j0 + W].try_into().expect("W columns");
        for r in 0..R {
            let av = rows[r][kk];
            for (s, &bv) in acc[r].iter_mut().zip(bk) {
                *s += av * bv;
            }
        }
    }
    acc
}

#[inline(always)]
fn store<const R: usize, const W: usize>(acc: &[[f32; W]; R], c: &mut [f32], n: usize, j0: usize) {
    for (r, row) in acc.iter().enumerate() {
        c[r * n + j0..][..W].copy_from_slice(row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sequential dot product the references compute.
    fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f32;
                for kk in 0..k {
                    s += a[i * k + kk] * b[kk * n + j];
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[test]
    fn bit_identical_to_the_sequential_dot_product() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (4, 16, 33),
            (9, 37, 130),
            (17, 512, 64),
            (13, 80, 21),
            (7, 47, 5),
            (37, 16, 40),
            (21, 70, 9),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos() / 7.0).collect();
            let mut c = vec![f32::NAN; m * n];
            ordered_matmul(m, n, k, |i| &a[i * k..], |kk| &b[kk * n..], &mut c);
            let want = reference(&a, &b, m, n, k);
            let same = c.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{m}x{n}x{k}");
        }
    }
}
