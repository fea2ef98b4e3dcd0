//! Which kernel instantiation of `cuda/fp8_gemm.cu` runs a given shape.
//!
//! Every kernel is a persistent, warp-specialized CTA of [`THREADS`] threads (two math
//! warpgroups issuing `wgmma` e4m3, one producer warpgroup issuing TMA), one CTA per SM, with a
//! compile-time tile `BLOCK_M x BLOCK_N` (K tile = 128 = one scale block) and pipeline depth. The
//! three shapes in [`TILE_CONFIGS`] are instantiated for each of the three GEMM kinds; their
//! shared-memory sizes are pinned on the CUDA side by a `static_assert` against the same numbers.
//!
//! The choice ([`choose_tile`]) is a waves-based cost model: for each shape, count the tiles, the
//! waves of `num_sms` persistent CTAs they take, and charge each wave the tile's MMA work divided
//! by a per-shape efficiency plus a fixed epilogue share. **The efficiencies and the epilogue share
//! are educated guesses, not measurements: no GPU was available when this was written. Tune them
//! (and the stage counts) by measurement on an H100 / H200.**

use crate::layout::{GROUPED_M_ALIGN, K_BLOCK};

/// Threads per CTA of every kernel: 2 math warpgroups + 1 producer warpgroup.
pub const THREADS: u32 = 384;

/// Dynamic shared memory a block may opt into on sm_90 (227 KiB).
pub const MAX_DYNAMIC_SMEM: usize = 232_448;

/// The three GEMM flavours (spec §5: dense layers, MoE prefill, MoE decode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmKind {
    /// `D[M,N] = A[M,K] . B[N,K]^T (+ residual)`.
    Dense,
    /// Rows of all groups back to back in `A [M, K]`, group per row in `m_indices`.
    GroupedContiguous,
    /// `A [G, M_max, K]` with `masked_m[g]` valid rows per group.
    GroupedMasked,
}

impl GemmKind {
    pub const ALL: [GemmKind; 3] = [
        GemmKind::Dense,
        GemmKind::GroupedContiguous,
        GemmKind::GroupedMasked,
    ];
}

/// One compiled tile shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TileConfig {
    /// Rows per tile: 128 = the two math warpgroups stacked along M; 64 = they split N.
    pub block_m: usize,
    /// Columns per tile; divides 128, so one weight scale per K block covers the tile.
    pub block_n: usize,
    /// Pipeline stages (each one K block of A, B and A scales).
    pub stages: usize,
    /// Dynamic shared memory of the launch; equal to `Config<..>::kSmemBytes` in the kernel.
    pub smem_bytes: u32,
    /// Relative MMA throughput per unit of tile area (cost model only, unmeasured guess): a
    /// 128-row tile feeds each B byte to two warpgroups and issues m64n128 wgmmas; 64-row tiles
    /// issue narrower wgmmas (n64 / n32 per warpgroup) and re-read A once per warpgroup.
    efficiency: f64,
}

/// The instantiations, largest first (ties in the cost model go to the earlier one).
pub const TILE_CONFIGS: [TileConfig; 3] = [
    TileConfig {
        block_m: 128,
        block_n: 128,
        stages: 5,
        smem_bytes: 202_320,
        efficiency: 1.0,
    },
    TileConfig {
        block_m: 64,
        block_n: 128,
        stages: 8,
        smem_bytes: 218_240,
        efficiency: 0.85,
    },
    TileConfig {
        block_m: 64,
        block_n: 64,
        stages: 8,
        smem_bytes: 144_512,
        efficiency: 0.7,
    },
];

/// The epilogue (BF16 conversion, staging, stores) of one tile, in units of one K block's MMA work
/// at efficiency 1 (cost model only, unmeasured guess).
const EPILOGUE_K_BLOCKS: f64 = 0.5;

impl TileConfig {
    /// Math warpgroups along N (1 when `block_m` = 128, 2 when 64) and the columns each owns.
    pub fn warpgroup_n(&self) -> usize {
        self.block_n / (2 / (self.block_m / 64))
    }

    /// The shared-memory layout of `fp8_gemm_kernel.cuh`'s `Config`, recomputed: stages of
    /// A (`block_m` x 128 e4m3), B (`block_n` x 128) and A scales (`block_m` f32), the epilogue
    /// staging (two warpgroups x 64 rows x (columns x 2 + 16) bytes), 2 mbarriers per stage, and
    /// 1024 bytes to align the base for the 128-byte swizzle.
    pub fn smem_layout_bytes(&self) -> usize {
        let stage = self.block_m * K_BLOCK + self.block_n * K_BLOCK + self.block_m * 4;
        let staging = 2 * 64 * (self.warpgroup_n() * 2 + 16);
        self.stages * stage + staging + 2 * self.stages * 8 + 1024
    }

    /// Short name for reports: `m{block_m}n{block_n}s{stages}`.
    pub fn label(&self) -> String {
        format!("m{}n{}s{}", self.block_m, self.block_n, self.stages)
    }

    /// The extern "C" name of this shape's kernel of `kind`.
    pub fn kernel_name(&self, kind: GemmKind) -> &'static str {
        match (kind, self.block_m, self.block_n) {
            (GemmKind::Dense, 128, 128) => "fp8_gemm_nt_m128n128",
            (GemmKind::Dense, 64, 128) => "fp8_gemm_nt_m64n128",
            (GemmKind::Dense, 64, 64) => "fp8_gemm_nt_m64n64",
            (GemmKind::GroupedContiguous, 128, 128) => "fp8_gemm_contiguous_m128n128",
            (GemmKind::GroupedContiguous, 64, 128) => "fp8_gemm_contiguous_m64n128",
            (GemmKind::GroupedContiguous, 64, 64) => "fp8_gemm_contiguous_m64n64",
            (GemmKind::GroupedMasked, 128, 128) => "fp8_gemm_masked_m128n128",
            (GemmKind::GroupedMasked, 64, 128) => "fp8_gemm_masked_m64n128",
            (GemmKind::GroupedMasked, 64, 64) => "fp8_gemm_masked_m64n64",
            _ => unreachable!("TileConfig values only come from TILE_CONFIGS"),
        }
    }

    /// Tiles of `groups` problems of `m` rows by `n` columns.
    pub fn num_tiles(&self, groups: usize, m: usize, n: usize) -> usize {
        groups * m.div_ceil(self.block_m) * n.div_ceil(self.block_n)
    }

    /// Cost-model estimate in arbitrary units (see the module docs): waves x per-tile time.
    fn cost(&self, groups: usize, m: usize, n: usize, k: usize, num_sms: usize) -> f64 {
        let waves = self.num_tiles(groups, m, n).div_ceil(num_sms);
        let k_blocks = (k / K_BLOCK).max(1) as f64;
        let area = (self.block_m * self.block_n) as f64;
        waves as f64 * area * (k_blocks / self.efficiency + EPILOGUE_K_BLOCKS)
    }
}

/// Picks the instantiation for `groups` problems of `m` x `n` x `k` on a GPU with `num_sms` SMs.
///
/// - Dense: `groups` = 1, `m` = M.
/// - Grouped contiguous: `groups` = 1, `m` = total rows (padding tiles cost nothing on the device
///   but are counted here; they are a small fraction).
/// - Grouped masked: `groups` = G, `m` = the caller's `expected_m` (the device-side `masked_m`
///   is not known on the host).
///
/// Heuristic (unmeasured, see the module docs): minimise waves x tile time. In practice this gives
/// 64-row tiles for decode-sized M (a 128-row tile would be mostly zero padding), 128 x 128 for
/// large M, and the narrower tiles when they turn a fraction of a wave into a full one. Every
/// choice is correct for every shape; only speed depends on it.
pub fn choose_tile(
    kind: GemmKind,
    groups: usize,
    m: usize,
    n: usize,
    k: usize,
    num_sms: usize,
) -> TileConfig {
    let (groups, m, n, num_sms) = (groups.max(1), m.max(1), n.max(1), num_sms.max(1));
    let mut best = TILE_CONFIGS[0];
    let mut best_cost = f64::INFINITY;
    for cfg in TILE_CONFIGS {
        if kind == GemmKind::GroupedContiguous && GROUPED_M_ALIGN % cfg.block_m != 0 {
            continue; // a tile must not straddle two groups (never true for the current shapes)
        }
        let cost = cfg.cost(groups, m, n, k, num_sms);
        if cost < best_cost {
            best = cfg;
            best_cost = cost;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::W_BLOCK;

    const H100_SMS: usize = 132;

    #[test]
    fn smem_sizes_match_the_kernel_layout() {
        for cfg in TILE_CONFIGS {
            assert_eq!(cfg.smem_layout_bytes(), cfg.smem_bytes as usize, "{cfg:?}");
            assert!(cfg.smem_layout_bytes() <= MAX_DYNAMIC_SMEM, "{cfg:?}");
        }
    }

    #[test]
    fn shapes_respect_the_kernel_constraints() {
        for cfg in TILE_CONFIGS {
            assert!(cfg.block_m == 64 || cfg.block_m == 128, "{cfg:?}");
            assert_eq!(
                W_BLOCK % cfg.block_n,
                0,
                "{cfg:?}: one weight scale per tile"
            );
            assert_eq!(
                GROUPED_M_ALIGN % cfg.block_m,
                0,
                "{cfg:?}: contiguous tiles"
            );
            assert!(
                [32, 64, 128].contains(&cfg.warpgroup_n()),
                "{cfg:?}: wgmma N"
            );
            assert!(cfg.stages >= 2);
        }
    }

    #[test]
    fn kernel_names_are_distinct() {
        let mut names: Vec<&str> = GemmKind::ALL
            .iter()
            .flat_map(|&kind| TILE_CONFIGS.iter().map(move |c| c.kernel_name(kind)))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        assert_eq!(n, 9);
    }

    #[test]
    fn decode_uses_64_row_tiles() {
        for m in [1, 4, 16, 64] {
            for (n, k) in [(2112, 7168), (24576, 1536), (7168, 16384), (4096, 7168)] {
                let cfg = choose_tile(GemmKind::Dense, 1, m, n, k, H100_SMS);
                assert_eq!(cfg.block_m, 64, "m={m} n={n} k={k}: {cfg:?}");
            }
        }
        let cfg = choose_tile(GemmKind::GroupedMasked, 32, 8, 4096, 7168, H100_SMS);
        assert_eq!(cfg.block_m, 64, "{cfg:?}");
    }

    #[test]
    fn narrow_decode_spreads_over_more_sms() {
        // 7168 / 128 = 56 tiles would leave most of 132 SMs idle; 64-wide tiles give 112.
        let cfg = choose_tile(GemmKind::Dense, 1, 1, 7168, 18432, H100_SMS);
        assert_eq!((cfg.block_m, cfg.block_n), (64, 64));
    }

    #[test]
    fn prefill_uses_128x128() {
        for (n, k) in [(18432, 7168), (7168, 18432), (24576, 1536), (7168, 16384)] {
            let cfg = choose_tile(GemmKind::Dense, 1, 8192, n, k, H100_SMS);
            assert_eq!((cfg.block_m, cfg.block_n), (128, 128), "n={n} k={k}");
        }
        let cfg = choose_tile(GemmKind::GroupedContiguous, 1, 32768, 4096, 7168, H100_SMS);
        assert_eq!((cfg.block_m, cfg.block_n), (128, 128));
    }

    #[test]
    fn every_input_gets_a_config() {
        for kind in GemmKind::ALL {
            for m in [0, 1, 63, 64, 65, 127, 128, 129, 1000, 4096] {
                for n in [16, 2112, 7168] {
                    for sms in [0, 1, 78, 132] {
                        let cfg = choose_tile(kind, 3, m, n, 128, sms);
                        assert!(TILE_CONFIGS.contains(&cfg));
                    }
                }
            }
        }
    }

    #[test]
    fn tile_counts() {
        let cfg = TILE_CONFIGS[0];
        assert_eq!(cfg.num_tiles(1, 129, 2112), 2 * 17);
        assert_eq!(cfg.num_tiles(4, 1, 16), 4);
    }
}
