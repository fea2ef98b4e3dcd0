//! Launch wrappers of `cuda/fp8_gemm.cu`: the block-scaled FP8 GEMMs (dense NT, grouped
//! contiguous, grouped masked) on Hopper.
//!
//! Each wrapper checks every shape and length against [`crate::layout`] on the host (a bad shape is
//! an error naming the argument, never an out-of-bounds access on the device), treats an empty
//! problem as a no-op, builds the TMA tensor maps for this call (a few microseconds of host work,
//! no device traffic), picks the instantiation with [`crate::tiles::choose_tile`] (or takes the one
//! a `*_with_tiles` entry point forces, see [`Tiles`]) and launches on the `Gpu`'s stream without
//! synchronizing. Device-side bad inputs of the grouped kinds (a group
//! index or masked row count out of range) skip the affected tiles and are recorded as status
//! code 3 in the caller's [`DeviceStatus`].

use half::bf16;
use kernels::gpu::{
    tensor_map_2d, CUtensorMapDataType, CUtensorMapSwizzle, DeviceStatus, DeviceTensor, Gpu,
    LaunchConfig, PushKernelArg,
};
use kernels::{E4m3, Error, Result};

use crate::cubins::FP8_GEMM;
use crate::layout::{act_scale_len, K_BLOCK, N_ALIGN, SCALE_ROW_ALIGN, W_BLOCK};
use crate::tiles::{choose_tile, GemmKind, TileConfig, THREADS, TILE_CONFIGS};
use crate::GROUPED_M_ALIGN;

/// Which kernel instantiation a launch uses: `None` lets [`choose_tile`]'s cost model pick (what
/// [`gemm_nt`], [`gemm_grouped_contiguous`] and [`gemm_grouped_masked`] do); `Some(cfg)` forces
/// `cfg`, one of [`TILE_CONFIGS`], whatever the shape. Every instantiation is correct for every
/// shape, so forcing changes only speed: the checks use it to run each tile configuration of each
/// GEMM kind on shapes the heuristic would never give it, and a tuning run can use it to time the
/// alternatives.
pub type Tiles = Option<TileConfig>;

/// The instantiation of `kind` for this launch: the forced one after checking that it is one of
/// [`TILE_CONFIGS`] and fits `kind`, else the heuristic's.
fn resolve_tiles(
    op: &'static str,
    kind: GemmKind,
    tiles: Tiles,
    heuristic: impl FnOnce() -> TileConfig,
) -> Result<TileConfig> {
    let Some(cfg) = tiles else {
        return Ok(heuristic());
    };
    if !TILE_CONFIGS.contains(&cfg) {
        return Err(Error::invalid(
            op,
            format!("forced tile configuration {cfg:?} is not one of TILE_CONFIGS"),
        ));
    }
    if kind == GemmKind::GroupedContiguous && GROUPED_M_ALIGN % cfg.block_m != 0 {
        return Err(Error::invalid(
            op,
            format!(
                "forced block_m = {} does not divide the group alignment {GROUPED_M_ALIGN}",
                cfg.block_m
            ),
        ));
    }
    Ok(cfg)
}

const OP_NT: &str = "fp8_gemm_nt";
const OP_CONTIGUOUS: &str = "fp8_gemm_grouped_contiguous";
const OP_MASKED: &str = "fp8_gemm_grouped_masked";

/// D[M,N] = A[M,K] . B[N,K]^T (+ residual). a: [M, K]; a_scales: 1-D, len
/// `layout::act_scale_len(M, K)` (block-major, as `kernels::ops::quantize_fp8` with
/// `ScaleLayout::BlockMajor` writes it); b: [N, K]; b_scales: [ceil(N/128), K/128];
/// residual: [M, N]; d: [M, N].
pub fn gemm_nt(
    gpu: &Gpu,
    a: &DeviceTensor<E4m3>,
    a_scales: &DeviceTensor<f32>,
    b: &DeviceTensor<E4m3>,
    b_scales: &DeviceTensor<f32>,
    residual: Option<&DeviceTensor<bf16>>,
    d: &mut DeviceTensor<bf16>,
) -> Result<()> {
    gemm_nt_with_tiles(gpu, a, a_scales, b, b_scales, residual, d, None)
}

/// [`gemm_nt`] with the instantiation forced by `tiles` (see [`Tiles`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm_nt_with_tiles(
    gpu: &Gpu,
    a: &DeviceTensor<E4m3>,
    a_scales: &DeviceTensor<f32>,
    b: &DeviceTensor<E4m3>,
    b_scales: &DeviceTensor<f32>,
    residual: Option<&DeviceTensor<bf16>>,
    d: &mut DeviceTensor<bf16>,
    tiles: Tiles,
) -> Result<()> {
    const OP: &str = OP_NT;
    let [m, k] = dims::<2, _>(OP, "a", "[M, K]", a)?;
    let [n, k_b] = dims::<2, _>(OP, "b", "[N, K]", b)?;
    check_k(OP, k, k_b)?;
    check_n(OP, n)?;
    a_scales.expect_shape(OP, "a_scales", &[act_scale_len(m, k)])?;
    b_scales.expect_shape(OP, "b_scales", &[n.div_ceil(W_BLOCK), k / K_BLOCK])?;
    if let Some(r) = residual {
        r.expect_shape(OP, "residual", &[m, n])?;
    }
    d.expect_shape(OP, "d", &[m, n])?;
    if m == 0 || n == 0 {
        return Ok(());
    }

    let cfg = resolve_tiles(OP, GemmKind::Dense, tiles, || {
        choose_tile(GemmKind::Dense, 1, m, n, k, num_sms(gpu))
    })?;
    let tiles = cfg.num_tiles(1, m, n);
    let launch = Launch {
        op: OP,
        kind: GemmKind::Dense,
        cfg,
        a: a.device_ptr(gpu),
        a_rows: m,
        a_scales: a_scales.device_ptr(gpu),
        scale_rows: m,
        scale_blocks: k / K_BLOCK,
        b: b.device_ptr(gpu),
        b_rows: n,
        b_scales: b_scales.device_ptr(gpu),
        residual: residual.map_or(0, |r| r.device_ptr(gpu)),
        d: d.device_ptr(gpu),
        group_info: 0,
        status: 0,
        m,
        n,
        k,
        groups: 1,
        tiles,
    };
    launch.run(gpu)
}

/// Grouped contiguous (MoE prefill). a: [M, K] with M a multiple of `GROUPED_M_ALIGN`; a_scales
/// 1-D len `act_scale_len(M, K)`; b: [G, N, K]; b_scales: [G, ceil(N/128), K/128]; m_indices: [M]
/// i32 (group of each row, -1 = padding row, constant within each `GROUPED_M_ALIGN`-row tile);
/// d: [M, N]. Rows with index -1 are not written. An index >= G (or < -1) on the device: that tile
/// is skipped and `status` records code 3.
#[allow(clippy::too_many_arguments)]
pub fn gemm_grouped_contiguous(
    gpu: &Gpu,
    a: &DeviceTensor<E4m3>,
    a_scales: &DeviceTensor<f32>,
    b: &DeviceTensor<E4m3>,
    b_scales: &DeviceTensor<f32>,
    m_indices: &DeviceTensor<i32>,
    d: &mut DeviceTensor<bf16>,
    status: &mut DeviceStatus,
) -> Result<()> {
    gemm_grouped_contiguous_with_tiles(gpu, a, a_scales, b, b_scales, m_indices, d, status, None)
}

/// [`gemm_grouped_contiguous`] with the instantiation forced by `tiles` (see [`Tiles`]; a forced
/// `block_m` must divide `GROUPED_M_ALIGN`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_grouped_contiguous_with_tiles(
    gpu: &Gpu,
    a: &DeviceTensor<E4m3>,
    a_scales: &DeviceTensor<f32>,
    b: &DeviceTensor<E4m3>,
    b_scales: &DeviceTensor<f32>,
    m_indices: &DeviceTensor<i32>,
    d: &mut DeviceTensor<bf16>,
    status: &mut DeviceStatus,
    tiles: Tiles,
) -> Result<()> {
    const OP: &str = OP_CONTIGUOUS;
    let [m, k] = dims::<2, _>(OP, "a", "[M, K]", a)?;
    let [groups, n, k_b] = dims::<3, _>(OP, "b", "[G, N, K]", b)?;
    check_k(OP, k, k_b)?;
    check_n(OP, n)?;
    if m % GROUPED_M_ALIGN != 0 {
        return Err(Error::shape(
            OP,
            format!("a has M = {m} rows, which must be a multiple of {GROUPED_M_ALIGN} (pad each group with rows of index -1)"),
        ));
    }
    a_scales.expect_shape(OP, "a_scales", &[act_scale_len(m, k)])?;
    b_scales.expect_shape(OP, "b_scales", &[groups, n.div_ceil(W_BLOCK), k / K_BLOCK])?;
    m_indices.expect_shape(OP, "m_indices", &[m])?;
    d.expect_shape(OP, "d", &[m, n])?;
    if m == 0 || n == 0 || groups == 0 {
        return Ok(());
    }

    let cfg = resolve_tiles(OP, GemmKind::GroupedContiguous, tiles, || {
        choose_tile(GemmKind::GroupedContiguous, 1, m, n, k, num_sms(gpu))
    })?;
    let tiles = cfg.num_tiles(1, m, n);
    let launch = Launch {
        op: OP,
        kind: GemmKind::GroupedContiguous,
        cfg,
        a: a.device_ptr(gpu),
        a_rows: m,
        a_scales: a_scales.device_ptr(gpu),
        scale_rows: m,
        scale_blocks: k / K_BLOCK,
        b: b.device_ptr(gpu),
        b_rows: checked_mul(OP, "G * N", groups, n)?,
        b_scales: b_scales.device_ptr(gpu),
        residual: 0,
        d: d.device_ptr(gpu),
        group_info: m_indices.device_ptr(gpu),
        status: status.word().device_ptr(gpu),
        m,
        n,
        k,
        groups,
        tiles,
    };
    launch.run(gpu)
}

/// Grouped masked (MoE decode). a: [G, M_max, K]; a_scales 1-D len `G * act_scale_len(M_max, K)`;
/// b: [G, N, K]; b_scales [G, ceil(N/128), K/128]; masked_m: [G] i32 each in 0..=M_max (a value
/// outside: that group is skipped and `status` records code 3); expected_m: host hint of the
/// typical masked_m (tile choice only); d: [G, M_max, N]; rows >= masked_m[g] are neither computed
/// nor written.
#[allow(clippy::too_many_arguments)]
pub fn gemm_grouped_masked(
    gpu: &Gpu,
    a: &DeviceTensor<E4m3>,
    a_scales: &DeviceTensor<f32>,
    b: &DeviceTensor<E4m3>,
    b_scales: &DeviceTensor<f32>,
    masked_m: &DeviceTensor<i32>,
    expected_m: usize,
    d: &mut DeviceTensor<bf16>,
    status: &mut DeviceStatus,
) -> Result<()> {
    gemm_grouped_masked_with_tiles(
        gpu, a, a_scales, b, b_scales, masked_m, expected_m, d, status, None,
    )
}

/// [`gemm_grouped_masked`] with the instantiation forced by `tiles` (see [`Tiles`]; `expected_m`
/// is then unused).
#[allow(clippy::too_many_arguments)]
pub fn gemm_grouped_masked_with_tiles(
    gpu: &Gpu,
    a: &DeviceTensor<E4m3>,
    a_scales: &DeviceTensor<f32>,
    b: &DeviceTensor<E4m3>,
    b_scales: &DeviceTensor<f32>,
    masked_m: &DeviceTensor<i32>,
    expected_m: usize,
    d: &mut DeviceTensor<bf16>,
    status: &mut DeviceStatus,
    tiles: Tiles,
) -> Result<()> {
    const OP: &str = OP_MASKED;
    let [groups, m_max, k] = dims::<3, _>(OP, "a", "[G, M_max, K]", a)?;
    let [groups_b, n, k_b] = dims::<3, _>(OP, "b", "[G, N, K]", b)?;
    if groups_b != groups {
        return Err(Error::shape(
            OP,
            format!("b has {groups_b} groups, a has {groups}"),
        ));
    }
    check_k(OP, k, k_b)?;
    check_n(OP, n)?;
    let per_group = act_scale_len(m_max, k);
    a_scales.expect_shape(
        OP,
        "a_scales",
        &[checked_mul(
            OP,
            "G * act_scale_len(M_max, K)",
            groups,
            per_group,
        )?],
    )?;
    b_scales.expect_shape(OP, "b_scales", &[groups, n.div_ceil(W_BLOCK), k / K_BLOCK])?;
    masked_m.expect_shape(OP, "masked_m", &[groups])?;
    d.expect_shape(OP, "d", &[groups, m_max, n])?;
    if groups == 0 || m_max == 0 || n == 0 {
        return Ok(());
    }

    let hint = expected_m.clamp(1, m_max);
    let cfg = resolve_tiles(OP, GemmKind::GroupedMasked, tiles, || {
        choose_tile(GemmKind::GroupedMasked, groups, hint, n, k, num_sms(gpu))
    })?;
    // Upper bound (every group full); the device walks only the tiles masked_m asks for.
    let tiles = cfg.num_tiles(groups, m_max, n);
    let launch = Launch {
        op: OP,
        kind: GemmKind::GroupedMasked,
        cfg,
        a: a.device_ptr(gpu),
        a_rows: checked_mul(OP, "G * M_max", groups, m_max)?,
        a_scales: a_scales.device_ptr(gpu),
        scale_rows: m_max,
        scale_blocks: checked_mul(OP, "G * K / 128", groups, k / K_BLOCK)?,
        b: b.device_ptr(gpu),
        b_rows: checked_mul(OP, "G * N", groups, n)?,
        b_scales: b_scales.device_ptr(gpu),
        residual: 0,
        d: d.device_ptr(gpu),
        group_info: masked_m.device_ptr(gpu),
        status: status.word().device_ptr(gpu),
        m: m_max,
        n,
        k,
        groups,
        tiles,
    };
    launch.run(gpu)
}

/// Everything one kernel launch needs, after the shape checks.
struct Launch {
    op: &'static str,
    kind: GemmKind,
    cfg: TileConfig,
    /// A as a 2-D row-major [a_rows, k] e4m3 matrix (all groups stacked for masked).
    a: u64,
    a_rows: usize,
    /// A scales as a 2-D [scale_blocks, round_up(scale_rows, 4)] f32 matrix: the block-major
    /// table(s), K block (of each group, for masked) by row.
    a_scales: u64,
    scale_rows: usize,
    scale_blocks: usize,
    /// B as a 2-D row-major [b_rows, k] e4m3 matrix (all groups stacked).
    b: u64,
    b_rows: usize,
    b_scales: u64,
    residual: u64,
    d: u64,
    group_info: u64,
    status: u64,
    m: usize,
    n: usize,
    k: usize,
    groups: usize,
    /// Tiles of the problem (an upper bound for masked): the grid is min(SMs, tiles).
    tiles: usize,
}

impl Launch {
    fn run(self, gpu: &Gpu) -> Result<()> {
        let op = self.op;
        // 16-byte alignment: TMA base addresses, the 16-byte epilogue stores / residual loads.
        // (Row strides are multiples of 16 bytes by the shape rules: K % 128, N % 16, and the
        // scale table's rows are padded to 4 f32.)
        for (what, ptr) in [
            ("a", self.a),
            ("a_scales", self.a_scales),
            ("b", self.b),
            ("d", self.d),
            ("residual", self.residual),
        ] {
            if ptr % 16 != 0 {
                return Err(Error::invalid(
                    op,
                    format!("{what} must be 16-byte aligned (device address {ptr:#x})"),
                ));
            }
        }
        // Everything the kernel indexes with i32 (coordinates, tile indices, row counts).
        let m_i = as_i32(op, "M", self.m)?;
        let n_i = as_i32(op, "N", self.n)?;
        let k_i = as_i32(op, "K", self.k)?;
        let g_i = as_i32(op, "G", self.groups)?;
        as_i32(op, "the number of A rows", self.a_rows)?;
        as_i32(op, "the number of B rows", self.b_rows)?;
        as_i32(op, "the number of A-scale rows", self.scale_blocks)?;
        let tiles = as_i32(op, "the number of tiles", self.tiles)? as u32;

        let block_m = self.cfg.block_m as u32;
        let block_n = self.cfg.block_n as u32;
        let block_k = K_BLOCK as u32;
        let map_a = tensor_map_2d(
            self.a,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            1,
            self.a_rows,
            self.k,
            self.k,
            block_m,
            block_k,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        )?;
        let map_b = tensor_map_2d(
            self.b,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            1,
            self.b_rows,
            self.k,
            self.k,
            block_n,
            block_k,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        )?;
        let scale_cols = self.scale_rows.next_multiple_of(SCALE_ROW_ALIGN);
        let map_sa = tensor_map_2d(
            self.a_scales,
            CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
            4,
            self.scale_blocks,
            scale_cols,
            scale_cols * 4,
            1,
            block_m,
            CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
        )?;

        let name = self.cfg.kernel_name(self.kind);
        let f = gpu.function(&FP8_GEMM, name)?;
        gpu.set_max_dynamic_smem(&f, self.cfg.smem_bytes)?;
        let (bsp, rp, dp, gip, sp) = (
            self.b_scales,
            self.residual,
            self.d,
            self.group_info,
            self.status,
        );
        let mut args = gpu.stream().launch_builder(&f);
        args.arg(&map_a)
            .arg(&map_b)
            .arg(&map_sa)
            .arg(&bsp)
            .arg(&rp)
            .arg(&dp)
            .arg(&gip)
            .arg(&sp)
            .arg(&m_i)
            .arg(&n_i)
            .arg(&k_i)
            .arg(&g_i);
        let grid = tiles.min(num_sms(gpu) as u32).max(1);
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: self.cfg.smem_bytes,
        };
        // SAFETY: the argument list matches the kernels' parameters (three CUtensorMaps, five
        // pointers, four i32). The callers checked every shape against the layout: the tensor maps
        // cover exactly a / b / a_scales (TMA never reads outside a map: out-of-bounds box parts
        // are zero-filled), b_scales holds [G, ceil(N/128), K/128], d (and residual) hold every row
        // and column the epilogue may touch (it masks rows >= M or masked_m[g], columns >= N),
        // m_indices / masked_m have M / G entries and their values are range-checked on the
        // device; the shared-memory size is the instantiation's (the kernel traps otherwise).
        unsafe { gpu.launch(name, args, cfg) }
    }
}

fn num_sms(gpu: &Gpu) -> usize {
    usize::try_from(gpu.info().multiprocessors)
        .unwrap_or(1)
        .max(1)
}

/// The shape of `t` as an array of `R` dims, or a shape error naming `what`.
fn dims<const R: usize, T: kernels::gpu::DeviceElement>(
    op: &'static str,
    what: &str,
    expected: &str,
    t: &DeviceTensor<T>,
) -> Result<[usize; R]> {
    <[usize; R]>::try_from(t.shape()).map_err(|_| {
        Error::shape(
            op,
            format!("{what} must be {expected}, got {:?}", t.shape()),
        )
    })
}

fn check_k(op: &'static str, k: usize, k_b: usize) -> Result<()> {
    if k_b != k {
        return Err(Error::shape(op, format!("b has K = {k_b}, a has K = {k}")));
    }
    if k == 0 || k % K_BLOCK != 0 {
        return Err(Error::shape(
            op,
            format!("K = {k} (columns of a and b) must be a positive multiple of {K_BLOCK}"),
        ));
    }
    Ok(())
}

fn check_n(op: &'static str, n: usize) -> Result<()> {
    if n % N_ALIGN != 0 {
        return Err(Error::shape(
            op,
            format!("N = {n} (rows of b, columns of d) must be a multiple of {N_ALIGN}"),
        ));
    }
    Ok(())
}

fn checked_mul(op: &'static str, what: &str, x: usize, y: usize) -> Result<usize> {
    x.checked_mul(y)
        .ok_or_else(|| Error::invalid(op, format!("{what} = {x} * {y} overflows")))
}

/// Converts a size to the i32 a kernel parameter takes, or names what overflowed.
fn as_i32(op: &'static str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(op, format!("{what} = {v} does not fit in i32")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_tiles_are_used_as_given_and_unknown_ones_rejected() {
        let heuristic = TILE_CONFIGS[2];
        for kind in GemmKind::ALL {
            assert_eq!(
                resolve_tiles("t", kind, None, || heuristic).unwrap(),
                heuristic
            );
            for cfg in TILE_CONFIGS {
                let got = resolve_tiles("t", kind, Some(cfg), || unreachable!("forced"));
                assert_eq!(got.unwrap(), cfg, "{kind:?}");
            }
            let mut unknown = TILE_CONFIGS[0];
            unknown.stages = 3;
            let err = resolve_tiles("t", kind, Some(unknown), || heuristic).unwrap_err();
            assert!(err.to_string().contains("not one of TILE_CONFIGS"), "{err}");
        }
    }
}
