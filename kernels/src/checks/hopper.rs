//! Self-tests of the Hopper primitives in `kernels/include/dsv3/hopper.cuh` (bulk copy, TMA with
//! 128B swizzle, mbarrier, wgmma with BF16 and e4m3 operands), run through the tiny kernels of
//! `cuda/hopper_selftest.cu`. Other crates build their GEMM and attention kernels on these.

use half::bf16;

use super::CheckReport;
use crate::cubins::HOPPER_SELFTEST;
use crate::dtype::{e4m3_to_f32, E4m3};
use crate::error::{Error, Result};
use crate::gpu::{
    tensor_map_2d, CUtensorMapDataType, CUtensorMapSwizzle, Gpu, LaunchConfig, PushKernelArg,
};
use crate::metrics::rel_l2;
use crate::rng::Rng;

fn cfg(grid: (u32, u32), smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// dst = 2 * src through a 1D bulk copy into shared memory and a bulk store back.
pub fn check_bulk_copy(gpu: &Gpu, rng: &mut Rng, n: usize) -> Result<CheckReport> {
    if n % 4 != 0 || n * 4 > 48 * 1024 {
        return Err(Error::invalid(
            "hopper_bulk_copy",
            format!("n = {n} must be a multiple of 4 and <= 12288"),
        ));
    }
    let src: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    let dsrc = gpu.upload(&src, &[n])?;
    let ddst = gpu.poisoned::<f32>(&[n])?;
    let f = gpu.function(&HOPPER_SELFTEST, "hopper_bulk_copy_selftest")?;
    let (sp, dp, n_i) = (dsrc.device_ptr(gpu), ddst.device_ptr(gpu), n as i32);
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&sp).arg(&dp).arg(&n_i);
    // SAFETY: src/dst hold n floats; dynamic smem n * 4 bytes as the kernel expects.
    unsafe {
        gpu.launch(
            "hopper_bulk_copy_selftest",
            args,
            cfg((1, 1), (n * 4) as u32),
        )?
    };
    let got = gpu.download(&ddst)?;
    let mismatches = got
        .iter()
        .zip(&src)
        .filter(|(g, s)| **g != 2.0 * **s)
        .count();
    Ok(CheckReport::new(
        "hopper_bulk_copy",
        format!("{n} f32"),
        "mismatches",
        mismatches as f64,
        0.0,
    ))
}

/// A [rows, cols] BF16 matrix copied tile by tile through TMA (128B swizzle) and read back through
/// our swizzle function; rows and cols need not be multiples of the 64x64 box.
pub fn check_tma_tile(gpu: &Gpu, rng: &mut Rng, rows: usize, cols: usize) -> Result<CheckReport> {
    let src: Vec<bf16> = rng.normal_vec(rows * cols, 1.0);
    let dsrc = gpu.upload(&src, &[rows, cols])?;
    let ddst = gpu.poisoned::<bf16>(&[rows, cols])?;
    let map = tensor_map_2d(
        dsrc.device_ptr(gpu),
        CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        2,
        rows,
        cols,
        cols * 2,
        64,
        64,
        CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
    )?;
    let f = gpu.function(&HOPPER_SELFTEST, "hopper_tma_tile_selftest")?;
    let (dp, r_i, c_i) = (ddst.device_ptr(gpu), rows as i32, cols as i32);
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&map).arg(&dp).arg(&r_i).arg(&c_i);
    let grid = (cols.div_ceil(64) as u32, rows.div_ceil(64) as u32);
    // SAFETY: the map covers src; dst is [rows, cols]; smem = one 64x64 bf16 tile + alignment slack.
    unsafe {
        gpu.launch(
            "hopper_tma_tile_selftest",
            args,
            cfg(grid, 64 * 64 * 2 + 1024),
        )?
    };
    let got = gpu.download(&ddst)?;
    let mismatches = got
        .iter()
        .zip(&src)
        .filter(|(g, s)| g.to_bits() != s.to_bits())
        .count();
    Ok(CheckReport::new(
        "hopper_tma_tile",
        format!("[{rows}, {cols}] bf16"),
        "mismatches",
        mismatches as f64,
        0.0,
    ))
}

/// d[64, 64] = a[64, k] . b[64, k]^T in f64 from the operands' exact values.
fn reference_nt(a: &[f32], b: &[f32], k: usize) -> Vec<f64> {
    let mut d = vec![0.0f64; 64 * 64];
    for i in 0..64 {
        for j in 0..64 {
            d[i * 64 + j] = (0..k)
                .map(|kk| f64::from(a[i * k + kk]) * f64::from(b[j * k + kk]))
                .sum();
        }
    }
    d
}

/// Products of BF16 or e4m3 values are exact in f32 and the tensor cores accumulate in f32, so the
/// only error is f32 summation over k terms: ~k * 2^-24 relative in the worst case, far below 1e-5
/// for k <= 512.
const WGMMA_TOL: f64 = 1e-5;

fn run_wgmma(gpu: &Gpu, kernel: &'static str, a: u64, b: u64, k: usize) -> Result<Vec<f32>> {
    let dd = gpu.poisoned::<f32>(&[64, 64])?;
    let f = gpu.function(&HOPPER_SELFTEST, kernel)?;
    let (dp, k_i) = (dd.device_ptr(gpu), k as i32);
    let mut args = gpu.stream().launch_builder(&f);
    args.arg(&a).arg(&b).arg(&dp).arg(&k_i);
    // SAFETY: a, b are [64, k]; d is [64, 64]; smem = two 64x128-byte tiles + alignment slack.
    unsafe { gpu.launch(kernel, args, cfg((1, 1), 2 * 64 * 128 + 1024))? };
    gpu.download(&dd)
}

pub fn check_wgmma_bf16(gpu: &Gpu, rng: &mut Rng, k: usize) -> Result<CheckReport> {
    if k == 0 || k % 64 != 0 {
        return Err(Error::invalid(
            "hopper_wgmma_bf16",
            format!("k = {k} must be a positive multiple of 64"),
        ));
    }
    let a: Vec<bf16> = rng.normal_vec(64 * k, 1.0);
    let b: Vec<bf16> = rng.normal_vec(64 * k, 1.0);
    let (da, db) = (gpu.upload(&a, &[64, k])?, gpu.upload(&b, &[64, k])?);
    let got = run_wgmma(
        gpu,
        "hopper_wgmma_bf16_selftest",
        da.device_ptr(gpu),
        db.device_ptr(gpu),
        k,
    )?;
    let to_f32 = |v: &[bf16]| v.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
    let expect = reference_nt(&to_f32(&a), &to_f32(&b), k);
    let err = rel_l2(got.iter().map(|&v| f64::from(v)), expect);
    Ok(CheckReport::new(
        "hopper_wgmma_bf16",
        format!("64x64x{k}"),
        "rel_l2",
        err,
        WGMMA_TOL,
    ))
}

/// wgmma with an N-major ("transposed") BF16 B operand: d = a[64, k] . b[k, 64], b row-major.
pub fn check_wgmma_bf16_trans_b(gpu: &Gpu, rng: &mut Rng, k: usize) -> Result<CheckReport> {
    const NAME: &str = "hopper_wgmma_bf16_trans_b";
    if k == 0 || k % 64 != 0 {
        return Err(Error::invalid(
            NAME,
            format!("k = {k} must be a positive multiple of 64"),
        ));
    }
    let a: Vec<bf16> = rng.normal_vec(64 * k, 1.0);
    let b_kn: Vec<bf16> = rng.normal_vec(k * 64, 1.0);
    let (da, db) = (gpu.upload(&a, &[64, k])?, gpu.upload(&b_kn, &[k, 64])?);
    let got = run_wgmma(
        gpu,
        "hopper_wgmma_bf16_tn_selftest",
        da.device_ptr(gpu),
        db.device_ptr(gpu),
        k,
    )?;
    // The reference takes B as [64, k] rows: transpose.
    let b_nk: Vec<f32> = (0..64 * k)
        .map(|i| b_kn[(i % k) * 64 + i / k].to_f32())
        .collect();
    let a32: Vec<f32> = a.iter().map(|x| x.to_f32()).collect();
    let err = rel_l2(
        got.iter().map(|&v| f64::from(v)),
        reference_nt(&a32, &b_nk, k),
    );
    Ok(CheckReport::new(
        NAME,
        format!("64x64x{k}"),
        "rel_l2",
        err,
        WGMMA_TOL,
    ))
}

pub fn check_wgmma_e4m3(gpu: &Gpu, rng: &mut Rng, k: usize) -> Result<CheckReport> {
    if k == 0 || k % 128 != 0 {
        return Err(Error::invalid(
            "hopper_wgmma_e4m3",
            format!("k = {k} must be a positive multiple of 128"),
        ));
    }
    // Random finite codes (exclude the NaN patterns 0x7f / 0xff).
    let mut code = || loop {
        let c = rng.next_u64() as u8;
        if c & 0x7f != 0x7f {
            return E4m3(c);
        }
    };
    let a: Vec<E4m3> = (0..64 * k).map(|_| code()).collect();
    let b: Vec<E4m3> = (0..64 * k).map(|_| code()).collect();
    let (da, db) = (gpu.upload(&a, &[64, k])?, gpu.upload(&b, &[64, k])?);
    let got = run_wgmma(
        gpu,
        "hopper_wgmma_e4m3_selftest",
        da.device_ptr(gpu),
        db.device_ptr(gpu),
        k,
    )?;
    let to_f32 = |v: &[E4m3]| v.iter().map(|x| e4m3_to_f32(x.0)).collect::<Vec<_>>();
    let expect = reference_nt(&to_f32(&a), &to_f32(&b), k);
    let err = rel_l2(got.iter().map(|&v| f64::from(v)), expect);
    Ok(CheckReport::new(
        "hopper_wgmma_e4m3",
        format!("64x64x{k}"),
        "rel_l2",
        err,
        WGMMA_TOL,
    ))
}
