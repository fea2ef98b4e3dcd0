//! The FP8 GEMM kernels against the exact f64 product of the reference, on fresh random operands,
//! for the GPU tests and `harness verify`.
//!
//! Pass criteria for every checked output row (outputs are poisoned with NaN bytes first):
//! - relative Frobenius error ||out - ref|| / ||ref|| <= [`GEMM_REL_TOL`];
//! - per element |out - ref| <= 2^-8 |ref| + 2^-10 sum_k |terms| (see [`element_bound`]): any
//!   single wrong, stale or unwritten element fails even when the norm hides it;
//! - rows the kernel must not write (grouped padding rows, rows past `masked_m`) still hold the
//!   poison bytes, bit for bit.
//!
//! Large problems check a sample of rows (all of the first and last 8, the rest random) so the f64
//! reference stays at seconds; every column of a checked row is compared, N tails included.

use half::bf16;
use kernels::checks::CheckReport;
use kernels::gpu::{DeviceStatus, DeviceTensor, Gpu};
use kernels::reference::fp8_quant::Fp8Activations;
use kernels::rng::Rng;
use kernels::{E4m3, Error, Result};

use crate::cases::DENSE_NK;
use crate::gpu::{self, Tiles};
use crate::inputs::{activations, weights, Draw};
use crate::layout::{K_BLOCK, W_BLOCK};
use crate::reference::{activation_rows, gemm_nt_f64, Fp8Weights};
use crate::tiles::TILE_CONFIGS;
use crate::GROUPED_M_ALIGN;

/// Bound on the relative Frobenius error of the BF16 output against the exact product. Rounding
/// to BF16 alone moves each element by at most 2^-8 of its value (so the norm by at most 2^-8 =
/// 3.9e-3; about 1.3e-3 in practice for random data); f32 accumulation with per-128 promotion
/// adds orders of magnitude less. 4e-3 is that bound with a hair of room.
pub const GEMM_REL_TOL: f64 = 4e-3;

/// Per-element allowance: BF16 rounding (2^-8 relative) plus 2^-10 of the sum of |terms|, which
/// covers f32 accumulation and the reduced-precision accumulation inside Hopper's FP8 tensor-core
/// instructions (about 14 mantissa bits, DeepSeek-V3 report §3.3.2) over the handful of
/// additions per 128-wide block before the partial is promoted.
pub fn element_bound(reference: f64, abs_terms: f64) -> f64 {
    2f64.powi(-8) * reference.abs() + 2f64.powi(-10) * abs_terms + 1e-30
}

/// Largest row count checked in full; above it rows are sampled.
const FULL_CHECK_ROWS: usize = 128;
const SAMPLED_ROWS: usize = 64;

/// Rows of `0..m` whose outputs are compared.
fn rows_to_check(rng: &mut Rng, m: usize) -> Vec<usize> {
    if m <= FULL_CHECK_ROWS {
        return (0..m).collect();
    }
    let mut rows: Vec<usize> = (0..8).chain(m - 8..m).collect();
    rows.extend((0..SAMPLED_ROWS - 16).map(|_| rng.below(m as u64) as usize));
    rows.sort_unstable();
    rows.dedup();
    rows
}

/// Accumulates the comparison of output rows against reference rows.
#[derive(Default)]
struct Comparison {
    diff2: f64,
    ref2: f64,
    bad_elements: usize,
    first_bad: Option<String>,
    unexpected_writes: usize,
}

impl Comparison {
    /// `got` vs exact `y64` (+ residual), element bound from `abs64`.
    fn row(&mut self, label: &str, got: &[bf16], y64: &[f64], abs64: &[f64], res: Option<&[bf16]>) {
        for (j, (&g, (&y, &a))) in got.iter().zip(y64.iter().zip(abs64)).enumerate() {
            let expect = y + res.map_or(0.0, |r| f64::from(r[j].to_f32()));
            let g = f64::from(g.to_f32());
            let err = (g - expect).abs();
            self.diff2 += if err.is_finite() {
                err * err
            } else {
                f64::INFINITY
            };
            self.ref2 += expect * expect;
            // A NaN error (a poisoned element the kernel never wrote) is not within the bound.
            let within = err <= element_bound(expect, a);
            if !within {
                self.bad_elements += 1;
                self.first_bad
                    .get_or_insert_with(|| format!("{label} col {j}: {g} vs {expect}"));
            }
        }
    }

    /// A row the kernel must leave alone: every element still the 0xffff poison.
    fn untouched(&mut self, got: &[bf16]) {
        self.unexpected_writes += got.iter().filter(|v| v.to_bits() != 0xffff).count();
    }

    fn report(self, kernel: &str, case: String) -> CheckReport {
        let rel = if self.ref2 > 0.0 {
            (self.diff2 / self.ref2).sqrt()
        } else if self.diff2 == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        let bad = self.bad_elements;
        let writes = self.unexpected_writes;
        CheckReport::new(kernel, case, "rel_l2", rel, GEMM_REL_TOL)
            .require(
                bad == 0,
                format!(
                    "{bad} elements outside the per-element bound (first: {})",
                    self.first_bad.unwrap_or_default()
                ),
            )
            .require(
                writes == 0,
                format!("{writes} elements written in rows that must stay untouched"),
            )
    }
}

/// The f64 reference of one row of `a` against `b`: (values, sum of |terms|).
fn reference_row(a: &Fp8Activations, row: usize, b: &Fp8Weights) -> Result<(Vec<f64>, Vec<f64>)> {
    gemm_nt_f64(&activation_rows(a, row, row + 1), b)
}

fn upload_weights(
    gpu: &Gpu,
    groups: &[Fp8Weights],
) -> Result<(DeviceTensor<E4m3>, DeviceTensor<f32>)> {
    let (n, k) = (groups[0].n, groups[0].k);
    let q: Vec<E4m3> = groups.iter().flat_map(|w| w.q.iter().copied()).collect();
    let s: Vec<f32> = groups
        .iter()
        .flat_map(|w| w.scales.iter().copied())
        .collect();
    let (nb, kb) = (n.div_ceil(W_BLOCK), k / K_BLOCK);
    if groups.len() == 1 {
        Ok((gpu.upload(&q, &[n, k])?, gpu.upload(&s, &[nb, kb])?))
    } else {
        let g = groups.len();
        Ok((gpu.upload(&q, &[g, n, k])?, gpu.upload(&s, &[g, nb, kb])?))
    }
}

/// The case-name suffix of a forced instantiation (empty when the heuristic picks).
fn tiles_label(tiles: Tiles) -> String {
    tiles.map_or_else(String::new, |cfg| format!(" tiles {}", cfg.label()))
}

/// Dense NT: D = A . B^T (+ residual) for one shape.
pub fn check_gemm_nt(
    gpu: &Gpu,
    rng: &mut Rng,
    shape: (usize, usize, usize),
    with_residual: bool,
    draw: Draw,
) -> Result<CheckReport> {
    check_gemm_nt_with_tiles(gpu, rng, shape, with_residual, draw, None)
}

/// [`check_gemm_nt`] on the instantiation `tiles` forces (see [`gpu::Tiles`]).
pub fn check_gemm_nt_with_tiles(
    gpu: &Gpu,
    rng: &mut Rng,
    (m, n, k): (usize, usize, usize),
    with_residual: bool,
    draw: Draw,
    tiles: Tiles,
) -> Result<CheckReport> {
    let a = activations(rng, m, k, draw);
    let b = weights(rng, n, k, draw);
    let residual: Vec<bf16> = if with_residual {
        rng.normal_vec(m * n, 1.0)
    } else {
        Vec::new()
    };
    let da = gpu.upload(&a.q, &[m, k])?;
    let dsa = gpu.upload(&a.scales, &[a.scales.len()])?;
    let (db, dsb) = upload_weights(gpu, std::slice::from_ref(&b))?;
    let dres = if with_residual {
        Some(gpu.upload(&residual, &[m, n])?)
    } else {
        None
    };
    let mut dd = gpu.poisoned::<bf16>(&[m, n])?;
    gpu::gemm_nt_with_tiles(gpu, &da, &dsa, &db, &dsb, dres.as_ref(), &mut dd, tiles)?;
    let got = gpu.download(&dd)?;

    let mut cmp = Comparison::default();
    for r in rows_to_check(rng, m) {
        let (y64, abs64) = reference_row(&a, r, &b)?;
        let res = with_residual.then(|| &residual[r * n..(r + 1) * n]);
        cmp.row(
            &format!("row {r}"),
            &got[r * n..(r + 1) * n],
            &y64,
            &abs64,
            res,
        );
    }
    let case = format!(
        "{m}x{n}x{k}{}{}{}",
        if with_residual { " +residual" } else { "" },
        if draw == Draw::Codes { " codes" } else { "" },
        tiles_label(tiles)
    );
    Ok(cmp.report("fp8_gemm_nt", case))
}

/// Grouped contiguous with the given rows per group (0 allowed); each group padded to
/// [`GROUPED_M_ALIGN`] rows with index -1.
pub fn check_grouped_contiguous(
    gpu: &Gpu,
    rng: &mut Rng,
    group_rows: &[usize],
    n: usize,
    k: usize,
) -> Result<CheckReport> {
    check_grouped_contiguous_with_tiles(gpu, rng, group_rows, n, k, None)
}

/// [`check_grouped_contiguous`] on the instantiation `tiles` forces (see [`gpu::Tiles`]).
pub fn check_grouped_contiguous_with_tiles(
    gpu: &Gpu,
    rng: &mut Rng,
    group_rows: &[usize],
    n: usize,
    k: usize,
    tiles: Tiles,
) -> Result<CheckReport> {
    let g = group_rows.len();
    let mut m_indices = Vec::new();
    for (gi, &rows) in group_rows.iter().enumerate() {
        let padded = rows.next_multiple_of(GROUPED_M_ALIGN);
        m_indices.extend(std::iter::repeat_n(gi as i32, rows));
        m_indices.extend(std::iter::repeat_n(-1, padded - rows));
    }
    let m = m_indices.len();
    let a = activations(rng, m, k, Draw::Quantized);
    let b: Vec<Fp8Weights> = (0..g)
        .map(|_| weights(rng, n, k, Draw::Quantized))
        .collect();
    let da = gpu.upload(&a.q, &[m, k])?;
    let dsa = gpu.upload(&a.scales, &[a.scales.len()])?;
    let (db, dsb) = upload_weights_grouped(gpu, &b)?;
    let dm = gpu.upload(&m_indices, &[m])?;
    let mut dd = gpu.poisoned::<bf16>(&[m, n])?;
    let mut status = DeviceStatus::new(gpu)?;
    gpu::gemm_grouped_contiguous_with_tiles(
        gpu,
        &da,
        &dsa,
        &db,
        &dsb,
        &dm,
        &mut dd,
        &mut status,
        tiles,
    )?;
    status.check(gpu, "fp8_gemm_grouped_contiguous")?;
    let got = gpu.download(&dd)?;

    let mut cmp = Comparison::default();
    let checked = rows_to_check(rng, m);
    for r in 0..m {
        let out = &got[r * n..(r + 1) * n];
        match m_indices[r] {
            -1 => cmp.untouched(out),
            gi if checked.binary_search(&r).is_ok() => {
                let (y64, abs64) = reference_row(&a, r, &b[gi as usize])?;
                cmp.row(&format!("row {r} (group {gi})"), out, &y64, &abs64, None);
            }
            _ => {}
        }
    }
    Ok(cmp.report(
        "fp8_gemm_grouped_contiguous",
        format!("groups {group_rows:?} x{n}x{k}{}", tiles_label(tiles)),
    ))
}

/// Like [`upload_weights`] but always `[G, N, K]`, also for one group.
fn upload_weights_grouped(
    gpu: &Gpu,
    groups: &[Fp8Weights],
) -> Result<(DeviceTensor<E4m3>, DeviceTensor<f32>)> {
    let (q, s) = upload_weights(gpu, groups)?;
    if groups.len() > 1 {
        return Ok((q, s));
    }
    let (n, k) = (groups[0].n, groups[0].k);
    Ok((
        q.reshape(&[1, n, k])?,
        s.reshape(&[1, n.div_ceil(W_BLOCK), k / K_BLOCK])?,
    ))
}

/// Grouped masked: `masked[g]` valid rows of `m_max` per group.
pub fn check_grouped_masked(
    gpu: &Gpu,
    rng: &mut Rng,
    m_max: usize,
    masked: &[usize],
    n: usize,
    k: usize,
) -> Result<CheckReport> {
    check_grouped_masked_with_tiles(gpu, rng, m_max, masked, n, k, None)
}

/// [`check_grouped_masked`] on the instantiation `tiles` forces (see [`gpu::Tiles`]).
pub fn check_grouped_masked_with_tiles(
    gpu: &Gpu,
    rng: &mut Rng,
    m_max: usize,
    masked: &[usize],
    n: usize,
    k: usize,
    tiles: Tiles,
) -> Result<CheckReport> {
    let g = masked.len();
    let a: Vec<Fp8Activations> = (0..g)
        .map(|_| activations(rng, m_max, k, Draw::Quantized))
        .collect();
    let b: Vec<Fp8Weights> = (0..g)
        .map(|_| weights(rng, n, k, Draw::Quantized))
        .collect();
    let q: Vec<E4m3> = a.iter().flat_map(|x| x.q.iter().copied()).collect();
    let s: Vec<f32> = a.iter().flat_map(|x| x.scales.iter().copied()).collect();
    let da = gpu.upload(&q, &[g, m_max, k])?;
    let dsa = gpu.upload(&s, &[s.len()])?;
    let (db, dsb) = upload_weights_grouped(gpu, &b)?;
    let counts: Vec<i32> = masked.iter().map(|&v| v as i32).collect();
    let dm = gpu.upload(&counts, &[g])?;
    let mut dd = gpu.poisoned::<bf16>(&[g, m_max, n])?;
    let mut status = DeviceStatus::new(gpu)?;
    let expected = masked.iter().sum::<usize>() / g.max(1);
    gpu::gemm_grouped_masked_with_tiles(
        gpu,
        &da,
        &dsa,
        &db,
        &dsb,
        &dm,
        expected,
        &mut dd,
        &mut status,
        tiles,
    )?;
    status.check(gpu, "fp8_gemm_grouped_masked")?;
    let got = gpu.download(&dd)?;

    let mut cmp = Comparison::default();
    for gi in 0..g {
        let checked = rows_to_check(rng, masked[gi]);
        for r in 0..m_max {
            let out = &got[(gi * m_max + r) * n..][..n];
            if r >= masked[gi] {
                cmp.untouched(out);
            } else if checked.binary_search(&r).is_ok() {
                let (y64, abs64) = reference_row(&a[gi], r, &b[gi])?;
                cmp.row(&format!("group {gi} row {r}"), out, &y64, &abs64, None);
            }
        }
    }
    Ok(cmp.report(
        "fp8_gemm_grouped_masked",
        format!(
            "m_max {m_max} masked {masked:?} x{n}x{k}{}",
            tiles_label(tiles)
        ),
    ))
}

/// Bad inputs: host-side shape errors before any launch, and device-side out-of-range group
/// indices / masked counts reported through the status word (and nothing written for them).
pub fn check_bad_inputs(gpu: &Gpu, rng: &mut Rng) -> Result<CheckReport> {
    let (n, k) = (64, 256);
    let mut problems = Vec::new();

    // K not a multiple of 128 / N not a multiple of 16: rejected on the host.
    let a_bad = gpu.zeros::<E4m3>(&[4, 200])?;
    let sa_bad = gpu.zeros::<f32>(&[8])?;
    let b_bad = gpu.zeros::<E4m3>(&[n, 200])?;
    let sb_bad = gpu.zeros::<f32>(&[1, 2])?;
    let mut d = gpu.poisoned::<bf16>(&[4, n])?;
    if !matches!(
        gpu::gemm_nt(gpu, &a_bad, &sa_bad, &b_bad, &sb_bad, None, &mut d),
        Err(Error::Shape { .. })
    ) {
        problems.push("K = 200 was not rejected as a shape error");
    }
    let b_n = gpu.zeros::<E4m3>(&[40, k])?;
    let sb_n = gpu.zeros::<f32>(&[1, 2])?;
    let a = gpu.zeros::<E4m3>(&[4, k])?;
    let sa = gpu.zeros::<f32>(&[8])?;
    let mut d40 = gpu.poisoned::<bf16>(&[4, 40])?;
    if !matches!(
        gpu::gemm_nt(gpu, &a, &sa, &b_n, &sb_n, None, &mut d40),
        Err(Error::Shape { .. })
    ) {
        problems.push("N = 40 was not rejected as a shape error");
    }

    // A group index equal to G on the device.
    let m = GROUPED_M_ALIGN;
    let acts = activations(rng, m, k, Draw::Quantized);
    let w = weights(rng, n, k, Draw::Quantized);
    let da = gpu.upload(&acts.q, &[m, k])?;
    let dsa = gpu.upload(&acts.scales, &[acts.scales.len()])?;
    let (db, dsb) = upload_weights_grouped(gpu, std::slice::from_ref(&w))?;
    let dm = gpu.upload(&vec![1i32; m], &[m])?;
    let mut dd = gpu.poisoned::<bf16>(&[m, n])?;
    let mut status = DeviceStatus::new(gpu)?;
    gpu::gemm_grouped_contiguous(gpu, &da, &dsa, &db, &dsb, &dm, &mut dd, &mut status)?;
    if !matches!(
        status.check(gpu, "fp8_gemm_grouped_contiguous"),
        Err(Error::IndexOutOfRange { .. })
    ) {
        problems.push("group index G was not reported");
    }
    if gpu.download(&dd)?.iter().any(|v| v.to_bits() != 0xffff) {
        problems.push("a tile with an out-of-range group index was written");
    }

    // masked_m > M_max on the device.
    let da3 = da.reshape(&[1, m, k])?;
    let dm3 = gpu.upload(&[m as i32 + 1], &[1])?;
    let mut dd3 = gpu.poisoned::<bf16>(&[1, m, n])?;
    gpu::gemm_grouped_masked(gpu, &da3, &dsa, &db, &dsb, &dm3, m, &mut dd3, &mut status)?;
    if !matches!(
        status.check(gpu, "fp8_gemm_grouped_masked"),
        Err(Error::IndexOutOfRange { .. })
    ) {
        problems.push("masked_m > M_max was not reported");
    }
    let failures = problems.len();
    Ok(CheckReport::new(
        "fp8_gemm",
        "bad inputs".into(),
        "problems",
        failures as f64,
        0.0,
    )
    .require(failures == 0, problems.join("; ")))
}

/// Every instantiation of [`TILE_CONFIGS`], forced, for each of the three GEMM kinds, on small
/// shapes with tails: M = 129 (one row past two 64-row tiles and one 128-row tile) and M = 1,
/// N = 144 (a multiple of 16 but not of 64: a partial N tile for every `block_n`), K = 1152 = 9 K
/// blocks (more than the deepest pipeline's 8 stages, so every stage ring wraps), a residual, an
/// empty group, a one-row group and groups that end inside a tile.
pub fn check_every_tile_config(gpu: &Gpu, rng: &mut Rng) -> Vec<Result<CheckReport>> {
    let (n, k) = (144, 1152);
    let mut out = Vec::new();
    for cfg in TILE_CONFIGS {
        let tiles = Some(cfg);
        out.push(check_gemm_nt_with_tiles(
            gpu,
            rng,
            (129, n, k),
            true,
            Draw::Quantized,
            tiles,
        ));
        out.push(check_gemm_nt_with_tiles(
            gpu,
            rng,
            (1, 48, 256),
            false,
            Draw::Codes,
            tiles,
        ));
        out.push(check_grouped_contiguous_with_tiles(
            gpu,
            rng,
            &[65, 0, 1, 130],
            n,
            k,
            tiles,
        ));
        out.push(check_grouped_masked_with_tiles(
            gpu,
            rng,
            129,
            &[0, 1, 65, 129],
            n,
            k,
            tiles,
        ));
    }
    out
}

/// The shapes of [`all_checks`].
struct Sizes {
    /// Dense (M, N, K) tails, each run plain and with a residual on code-valued operands.
    tails: Vec<(usize, usize, usize)>,
    /// Dense (M, N, K) runs without residual.
    dense: Vec<(usize, usize, usize)>,
    /// One dense run with residual spanning many tiles and pipeline stages.
    big: (usize, usize, usize),
    /// Grouped contiguous: (rows per group, N, K).
    contiguous: Vec<(Vec<usize>, usize, usize)>,
    /// Grouped masked: (M_max, masked rows per group, N, K).
    masked: Vec<(usize, Vec<usize>, usize, usize)>,
}

/// The GPU's shapes (tails around the tile edges and DeepSeek-V3's real N x K), or CPU-sized ones
/// for the interpreter build ([`kernels::EMULATED`]): the same tails with narrow N, and a few
/// cases spanning several tiles and more K blocks than any pipeline has stages.
fn sizes(quick: bool) -> Sizes {
    if kernels::EMULATED {
        return Sizes {
            tails: vec![
                (1, 16, 128),
                (63, 48, 512),
                (65, 208, 256),
                (127, 144, 384),
                (129, 80, 1152),
            ],
            dense: if quick {
                vec![(64, 272, 640)]
            } else {
                vec![(1, 272, 1024), (64, 272, 640), (128, 400, 256)]
            },
            big: (192, 272, 1280),
            contiguous: vec![
                (vec![0, 1, 200, 128, 77], 144, 512),
                (vec![300], 80, 1152),
                (vec![5, 0, 0, 130], 48, 256),
            ],
            masked: vec![
                (130, vec![0, 1, 130, 100], 144, 512),
                (64, vec![64], 80, 1152),
                (70, vec![3, 0, 69], 208, 256),
            ],
        };
    }
    let ms: &[usize] = if quick { &[64] } else { &[1, 64, 128, 4096] };
    let shapes: &[(usize, usize)] = if quick { &DENSE_NK[..2] } else { &DENSE_NK };
    let mut contiguous = vec![
        (vec![0, 1, 200, 128, 77], 4096, 7168),
        (vec![300], 7168, 2048),
        (vec![5, 0, 0, 130], 48, 256),
    ];
    if !quick {
        contiguous.push((vec![1024; 4], 4096, 7168));
    }
    Sizes {
        tails: vec![
            (1, 16, 128),
            (63, 48, 512),
            (65, 2112, 256),
            (127, 144, 384),
            (129, 7168, 128),
        ],
        dense: ms
            .iter()
            .flat_map(|&m| shapes.iter().map(move |&(n, k)| (m, n, k)))
            .collect(),
        big: (128, 7168, 16384),
        contiguous,
        masked: vec![
            (256, vec![0, 1, 256, 100], 4096, 7168),
            (64, vec![64], 7168, 2048),
            (70, vec![3, 0, 69], 2112, 256),
        ],
    }
}

/// Every FP8 GEMM case `harness verify` runs; `quick` keeps the tails and a few V3 shapes. Ends
/// with [`check_every_tile_config`].
pub fn all_checks(gpu: &Gpu, quick: bool) -> Vec<Result<CheckReport>> {
    let mut rng = Rng::fresh();
    let rng = &mut rng;
    let sizes = sizes(quick);
    let mut out = Vec::new();
    // Tails: M around tile edges, N multiples of 16 that are not multiples of 64/128.
    for &shape in &sizes.tails {
        out.push(check_gemm_nt(gpu, rng, shape, false, Draw::Quantized));
        out.push(check_gemm_nt(gpu, rng, shape, true, Draw::Codes));
    }
    for &shape in &sizes.dense {
        out.push(check_gemm_nt(gpu, rng, shape, false, Draw::Quantized));
    }
    out.push(check_gemm_nt(gpu, rng, sizes.big, true, Draw::Quantized));
    for (groups, n, k) in &sizes.contiguous {
        out.push(check_grouped_contiguous(gpu, rng, groups, *n, *k));
    }
    for (m_max, masked, n, k) in &sizes.masked {
        out.push(check_grouped_masked(gpu, rng, *m_max, masked, *n, *k));
    }
    out.push(check_bad_inputs(gpu, rng));
    out.extend(check_every_tile_config(gpu, rng));
    out
}
