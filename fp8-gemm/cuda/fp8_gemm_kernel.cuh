// Block-scaled FP8 GEMM for Hopper (sm_90a): D = A . B^T with one f32 scale per (row, 128-K block)
// for A and per (128 x 128 block) for B, spec §4. The operand layouts are fixed by
// fp8-gemm/src/layout.rs; the launch wrappers are fp8-gemm/src/gpu.rs; the instantiations are
// listed in fp8_gemm.cu and mirrored in fp8-gemm/src/tiles.rs.
//
// Structure (DeepGEMM-style warp specialisation, persistent CTAs):
//
//   CTA = 3 warpgroups (384 threads)
//     WG 0, WG 1  math: wgmma e4m3 x e4m3 -> f32, per-K-block promotion, epilogue
//     WG 2        producer: one thread issues every TMA load (A tile, B tile, A scales)
//
//   shared memory (dynamic, base rounded up to 1024 bytes):
//     A[kStages]   BLOCK_M x 128 e4m3, 128B-swizzled (TMA SWIZZLE_128B)   1024-aligned
//     B[kStages]   BLOCK_N x 128 e4m3, 128B-swizzled                       1024-aligned
//     SA[kStages]  BLOCK_M f32 A scales of this K block                    128-aligned
//     C            per math WG: 64 rows x (WN bf16 + 16 pad bytes)          epilogue staging
//     full[kStages], empty[kStages]  mbarriers
//
// K tile = 128 = one scale block = one 128-byte swizzle row of e4m3, so each pipeline stage is one
// K block: A tile, B tile and the A scales of exactly the block the MMAs of that stage consume.
//
// The promotion (spec §4, DeepSeek-V3 report §3.3): Hopper's FP8 tensor cores accumulate with
// limited precision, so a long K chain drifts. Each K block's 4 wgmma k32 steps go into a fresh f32
// `partial` (scale-d = 0 on the first step discards the old contents), and after the wgmma wait the
// CUDA cores fold it into the f32 `total`: total += partial * (sa[row, kb] * sb[n_blk, kb]). The
// partial never sees more than 128 products, and every tile's BLOCK_N divides 128, so all its
// columns share one weight scale per K block (a scalar sb).
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "dsv3/common.cuh"
#include "dsv3/hopper.cuh"

namespace fp8_gemm {

enum class GemmKind : int {
  kDense = 0,              // D[M,N] = A[M,K] . B[N,K]^T (+ residual)
  kGroupedContiguous = 1,  // rows of every group back to back; group of a tile = m_indices[row0]
  kGroupedMasked = 2,      // A [G, M_max, K]; group g has masked_m[g] valid rows
};

constexpr uint32_t kBlockK = 128;  // layout::K_BLOCK: K per scale block and per pipeline stage
constexpr uint32_t kWBlock = 128;  // layout::W_BLOCK: rows / cols per weight scale block
constexpr uint32_t kNumMathWarpgroups = 2;
constexpr uint32_t kNumMathThreads = 128 * kNumMathWarpgroups;
constexpr uint32_t kNumThreads = kNumMathThreads + 128;  // + the producer warpgroup
// setmaxnreg budget: 128 * 40 + 256 * 232 = 64512 <= 65536 registers per SM. The producer needs
// only a handful (a scheduler, coordinates, a loop); the math threads hold two f32 fragments of up
// to 64 registers each (partial + total) plus addressing. The launch bound (384 threads, 1 CTA)
// makes ptxas start every thread at 168 registers, which is what setmaxnreg redistributes.
constexpr uint32_t kProducerRegs = 40;
constexpr uint32_t kMathRegs = 232;
// Tiles of consecutive indices cover kRasterGroupM M blocks x (132 / kRasterGroupM) N blocks,
// so the ~132 tiles in flight at once touch few distinct A row blocks and B column blocks and both
// stay in L2 (Triton-style grouped ordering).
constexpr uint32_t kRasterGroupM = 8;
// Opt-in dynamic shared memory limit per block on sm_90 (227 KiB).
constexpr uint32_t kMaxDynamicSmem = 232448;

// Compile-time geometry of one instantiation. Must agree with fp8-gemm/src/tiles.rs (the smem
// total is pinned by a static_assert in fp8_gemm.cu against the number tiles.rs uses).
template <uint32_t BM, uint32_t BN, uint32_t STAGES>
struct Config {
  static_assert(BM == 64 || BM == 128, "BLOCK_M is 64 (one WG row block) or 128 (two)");
  static_assert(BN >= 64 && kWBlock % BN == 0,
                "BLOCK_N must divide 128 so a tile uses one weight scale per K block");
  static_assert(STAGES >= 2, "a pipeline needs at least two stages");

  // The two math warpgroups split the tile: along M when BLOCK_M = 128 (each WG 64 rows x BN),
  // along N when BLOCK_M = 64 (each WG 64 rows x BN/2). Every WG issues m64nWNk32 wgmmas.
  static constexpr uint32_t kWgM = BM / 64;                  // warpgroups along M
  static constexpr uint32_t kWgN = kNumMathWarpgroups / kWgM;  // warpgroups along N
  static constexpr uint32_t kWN = BN / kWgN;                 // columns per warpgroup
  static_assert(kWgM * kWgN == kNumMathWarpgroups, "two math warpgroups");
  static_assert(kWN == 32 || kWN == 64 || kWN == 128, "wgmma N per warpgroup");
  static constexpr uint32_t kAccRegs = kWN / 2;  // f32 accumulators per thread per fragment

  static constexpr uint32_t kABytes = BM * kBlockK;  // e4m3: 1 byte per element
  static constexpr uint32_t kBBytes = BN * kBlockK;
  static constexpr uint32_t kSaBytes = BM * 4;
  // Every byte the three TMA boxes of a stage deliver (out-of-bounds parts included).
  static constexpr uint32_t kTxBytes = kABytes + kBBytes + kSaBytes;
  static_assert(kABytes % 1024 == 0 && kBBytes % 1024 == 0, "swizzle atoms are 1024 bytes");

  // Epilogue staging: row stride = WN bf16 + 16 bytes. The +16 shifts consecutive rows by 4 banks,
  // so the fragment writes (8 rows x 4 lanes x 4 bytes per warp) hit 32 distinct banks, and rows
  // stay 16-byte aligned for the 16-byte copy-out.
  static constexpr uint32_t kCStride = kWN * 2 + 16;
  static constexpr uint32_t kCBytesPerWg = 64 * kCStride;

  static constexpr uint32_t kOffA = 0;
  static constexpr uint32_t kOffB = kOffA + STAGES * kABytes;
  static constexpr uint32_t kOffSa = kOffB + STAGES * kBBytes;
  static constexpr uint32_t kOffC = kOffSa + STAGES * kSaBytes;
  static constexpr uint32_t kOffBar = kOffC + kNumMathWarpgroups * kCBytesPerWg;
  static constexpr uint32_t kSmemUsed = kOffBar + 2 * STAGES * 8;
  // + 1024: dynamic smem is only guaranteed 16-byte aligned; the base is rounded up to 1024.
  static constexpr uint32_t kSmemBytes = kSmemUsed + 1024;
  static_assert(kOffSa % 1024 == 0 && kOffC % 128 == 0 && kOffBar % 8 == 0, "smem alignment");
  static_assert(kSmemBytes <= kMaxDynamicSmem, "shared memory over the sm_90 limit");
};

// One output tile handed out by the scheduler.
struct Tile {
  int group;    // B / scale group (0 for dense)
  int m_block;  // BLOCK_M rows: within the group for masked, within A for dense / contiguous
  int n_block;  // BLOCK_N columns
  int rows;     // valid rows of the tile's row space: M (dense, contiguous) or masked_m[group]
};

// Grouped ("Triton GROUP_M") rasterisation of a num_m x num_n grid of tiles: walks kRasterGroupM
// M blocks down each N column before moving to the next column. Bijective on [0, num_m * num_n).
__device__ __forceinline__ void raster(int t, int num_m, int num_n, int& m_block, int& n_block) {
  const int width = static_cast<int>(kRasterGroupM) * num_n;
  const int band = t / width;
  const int first_m = band * static_cast<int>(kRasterGroupM);
  const int band_rows = min(num_m - first_m, static_cast<int>(kRasterGroupM));
  const int r = t - band * width;
  m_block = first_m + r % band_rows;
  n_block = r / band_rows;
}

// Persistent tile scheduler: CTA b takes tiles b, b + gridDim.x, b + 2 * gridDim.x, ... of the
// linear tile order. The producer thread and every math thread run their own copy; the inputs
// (m_indices / masked_m) do not change during the kernel, so all copies yield the same sequence,
// which is what keeps the stage / phase counters of both sides in lock step.
template <GemmKind kKind, uint32_t BM, uint32_t BN>
struct Scheduler {
  const int* group_info;  // m_indices [M] (contiguous) or masked_m [G] (masked); unused for dense
  int* status;
  int m;  // rows: M (dense, contiguous) or M_max (masked)
  int num_groups;
  int num_m_blocks;  // dense / contiguous
  int num_n_blocks;
  int next_tile;
  bool record;  // whether this copy records status code 3 (one thread per tile / group)
  // Masked: the group the walk is in, its first linear tile, its tile count and M blocks / rows.
  int group;
  int group_first;
  int group_tiles;
  int group_m_blocks;
  int group_rows;

  __device__ __forceinline__ Scheduler(const int* group_info_, int* status_, int m_, int n_,
                                       int num_groups_, bool record_)
      : group_info(group_info_),
        status(status_),
        m(m_),
        num_groups(num_groups_),
        num_m_blocks(dsv3::ceil_div(m_, static_cast<int>(BM))),
        num_n_blocks(dsv3::ceil_div(n_, static_cast<int>(BN))),
        next_tile(static_cast<int>(blockIdx.x)),
        record(record_),
        group(-1),
        group_first(0),
        group_tiles(0),
        group_m_blocks(0),
        group_rows(0) {}

  __device__ __forceinline__ bool next(Tile& tile) {
    if constexpr (kKind == GemmKind::kDense) {
      if (next_tile >= num_m_blocks * num_n_blocks) return false;
      raster(next_tile, num_m_blocks, num_n_blocks, tile.m_block, tile.n_block);
      next_tile += static_cast<int>(gridDim.x);
      tile.group = 0;
      tile.rows = m;
      return true;
    } else if constexpr (kKind == GemmKind::kGroupedContiguous) {
      // Padding tiles (index -1) and tiles with a bad index are skipped by every copy alike.
      const int total = num_m_blocks * num_n_blocks;
      while (next_tile < total) {
        int m_block, n_block;
        raster(next_tile, num_m_blocks, num_n_blocks, m_block, n_block);
        next_tile += static_cast<int>(gridDim.x);
        // The index is constant within each GROUPED_M_ALIGN (= 128) row tile and BLOCK_M divides
        // 128, so the tile's first row speaks for all of its rows.
        const int g = __ldg(group_info + m_block * static_cast<int>(BM));
        if (g == -1) continue;
        if (g < -1 || g >= num_groups) {
          if (record) dsv3::record_status(status, dsv3::kStatusGroupOutOfRange);
          continue;
        }
        tile.group = g;
        tile.m_block = m_block;
        tile.n_block = n_block;
        tile.rows = m;
        return true;
      }
      return false;
    } else {
      // Groups are enumerated in order, each contributing ceil(masked_m[g] / BLOCK_M) x num_n
      // tiles. The walk only moves forward, so a CTA reads each masked_m once; it returns false
      // only after passing the last group, so every CTA reads every masked_m and a bad one is
      // recorded even when no tile of the problem is left (the same code from several CTAs is
      // harmless: record_status keeps the first non-zero code).
      const int t = next_tile;
      while (t >= group_first + group_tiles) {
        group_first += group_tiles;
        group_tiles = 0;
        ++group;
        if (group >= num_groups) return false;
        int rows = __ldg(group_info + group);
        if (rows < 0 || rows > m) {
          if (record) dsv3::record_status(status, dsv3::kStatusGroupOutOfRange);
          rows = 0;
        }
        group_rows = rows;
        group_m_blocks = dsv3::ceil_div(rows, static_cast<int>(BM));
        group_tiles = group_m_blocks * num_n_blocks;
      }
      raster(t - group_first, group_m_blocks, num_n_blocks, tile.m_block, tile.n_block);
      next_tile += static_cast<int>(gridDim.x);
      tile.group = group;
      tile.rows = group_rows;
      return true;
    }
  }
};

// The kernel body. Parameters (identical for the three kinds; see fp8-gemm/src/gpu.rs):
//   tmap_a   e4m3 as UINT8, rank 2 {K, rows}, box {128, BLOCK_M}, SWIZZLE_128B; rows = M
//            (dense, contiguous) or G * M_max (masked)
//   tmap_b   e4m3 as UINT8, rank 2 {K, rows}, box {128, BLOCK_N}, SWIZZLE_128B; rows = N or G * N
//   tmap_sa  f32, rank 2 {round_up(m, 4), rows}, box {BLOCK_M, 1}, no swizzle; rows = K / 128
//            (dense, contiguous) or G * K / 128 (masked: each group's block-major table in turn)
//   b_scales f32 [G, ceil(N / 128), K / 128] (G = 1 for dense)
//   residual bf16 [M, N] or null (dense only)
//   d        bf16 [M, N] (dense, contiguous) or [G, M_max, N] (masked)
//   group_info  m_indices [M] (contiguous), masked_m [G] (masked), unused (dense)
//   status   device status word (grouped kinds) or null
//   m = M (dense, contiguous) or M_max (masked); n = N (multiple of 16); k = K (multiple of 128)
template <GemmKind kKind, uint32_t BM, uint32_t BN, uint32_t STAGES>
__device__ __forceinline__ void fp8_gemm_body(const CUtensorMap* tmap_a, const CUtensorMap* tmap_b,
                                              const CUtensorMap* tmap_sa,
                                              const float* __restrict__ b_scales,
                                              const __nv_bfloat16* residual, __nv_bfloat16* d,
                                              const int* group_info, int* status, int m, int n,
                                              int k, int num_groups) {
  using Cfg = Config<BM, BN, STAGES>;
  using Sched = Scheduler<kKind, BM, BN>;

  // A launch with less dynamic shared memory than the layout below needs is a host bug: fail
  // loudly instead of overrunning shared memory.
  if (dsv3::dynamic_smem_size() < Cfg::kSmemBytes) __trap();

  DSV3_DYNAMIC_SMEM(uint8_t, dyn_smem);
  uint8_t* smem = dsv3::smem_align_up<1024>(dyn_smem);
  uint64_t* full_bar = reinterpret_cast<uint64_t*>(smem + Cfg::kOffBar);
  uint64_t* empty_bar = full_bar + STAGES;
  const uint32_t smem_base = dsv3::smem_u32(smem);

  const int k_blocks = k / static_cast<int>(kBlockK);

  // Barrier protocol, per stage s (phases alternate 0, 1, 0, ... per completion):
  //   full[s]   count 1: the producer's arrive.expect_tx(kTxBytes) + the TMA bytes complete it.
  //   empty[s]  count 8 (one per math warp): each math warp's lane 0 arrives once its
  //             warpgroup's wgmmas on the stage finished and it has read the stage's A scales.
  // Both sides walk stages 0..STAGES-1 cyclically across K blocks and tiles; the consumer waits
  // full[s] with parity `phase`, the producer waits empty[s] with parity `phase ^ 1` — on a
  // fresh barrier the "previous" phase (parity 1) counts as complete, so the first round of
  // waits on empty passes at once.
  if (threadIdx.x == 0) {
#pragma unroll
    for (uint32_t s = 0; s < STAGES; ++s) {
      dsv3::mbar_init(&full_bar[s], 1);
      dsv3::mbar_init(&empty_bar[s], kNumMathThreads / 32);
    }
    dsv3::fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x >= kNumMathThreads) {
    // ------------------------------------------------------------------ producer warpgroup
    dsv3::warpgroup_reg_dealloc<kProducerRegs>();
    if (threadIdx.x != kNumMathThreads) return;  // one thread issues everything

    dsv3::prefetch_tensormap(tmap_a);
    dsv3::prefetch_tensormap(tmap_b);
    dsv3::prefetch_tensormap(tmap_sa);

    Sched sched(group_info, status, m, n, num_groups, /*record=*/false);
    uint32_t stage = 0;
    uint32_t phase = 0;
    Tile tile;
    while (sched.next(tile)) {
      const int m0 = tile.m_block * static_cast<int>(BM);
      // Masked: group g's rows start at g * M_max in A and its scale table at K block g * K/128.
      const int a_row = (kKind == GemmKind::kGroupedMasked ? tile.group * m : 0) + m0;
      const int sa_row = kKind == GemmKind::kGroupedMasked ? tile.group * k_blocks : 0;
      const int b_row = tile.group * n + tile.n_block * static_cast<int>(BN);
      for (int kb = 0; kb < k_blocks; ++kb) {
        dsv3::mbar_wait(&empty_bar[stage], phase ^ 1u, "fp8_gemm TMA producer (empty slot)");
        uint64_t* bar = &full_bar[stage];
        dsv3::mbar_arrive_expect_tx(bar, Cfg::kTxBytes);
        const int k0 = kb * static_cast<int>(kBlockK);
        dsv3::tma_load_2d(smem + Cfg::kOffA + stage * Cfg::kABytes, tmap_a, bar, k0, a_row);
        dsv3::tma_load_2d(smem + Cfg::kOffB + stage * Cfg::kBBytes, tmap_b, bar, k0, b_row);
        dsv3::tma_load_2d(smem + Cfg::kOffSa + stage * Cfg::kSaBytes, tmap_sa, bar, m0, sa_row + kb);
        if (++stage == STAGES) {
          stage = 0;
          phase ^= 1u;
        }
      }
    }
    return;
  }

  // -------------------------------------------------------------------- math warpgroups
  dsv3::warpgroup_reg_alloc<kMathRegs>();

  const uint32_t wg = threadIdx.x / 128;  // 0 or 1
  const uint32_t t = threadIdx.x % 128;   // thread within the warpgroup
  const uint32_t lane = t % 32;
  const uint32_t wg_m = Cfg::kWgM == 2 ? wg : 0u;  // this WG's 64-row block within the tile
  const uint32_t wg_n = Cfg::kWgM == 2 ? 0u : wg;  // this WG's WN-column block within the tile
  // The two rows this thread's accumulator fragment covers (wgmma D layout: rows r0 and r0 + 8).
  const uint32_t r0 = static_cast<uint32_t>(dsv3::wgmma_acc_row(static_cast<int>(t), 0));
  const uint32_t sa_idx0 = wg_m * 64 + r0;
  const uint32_t sa_idx1 = sa_idx0 + 8;
  // Shared-window byte offsets of this WG's operands inside a stage: A rows wg_m*64.. (64 rows of
  // 128 bytes = 8 swizzle atoms), B rows wg_n*WN.. (WN/8 atoms). Both multiples of 1024, so the
  // descriptors' base-offset field stays 0.
  const uint32_t a_wg_off = wg_m * 64 * kBlockK;
  const uint32_t b_wg_off = wg_n * Cfg::kWN * kBlockK;
  const int num_w_blocks_n = dsv3::ceil_div(n, static_cast<int>(kWBlock));

  float partial[Cfg::kAccRegs];
  float total[Cfg::kAccRegs];
#pragma unroll
  for (uint32_t i = 0; i < Cfg::kAccRegs; ++i) partial[i] = 0.0f;

  Sched sched(group_info, status, m, n, num_groups, /*record=*/threadIdx.x == 0);
  uint32_t stage = 0;
  uint32_t phase = 0;
  Tile tile;
  while (sched.next(tile)) {
#pragma unroll
    for (uint32_t i = 0; i < Cfg::kAccRegs; ++i) total[i] = 0.0f;

    // The tile's weight scales: row (group, n-block of 128) of [G, ceil(N/128), K/128]. BLOCK_N
    // divides 128, so n0 / 128 is the block of every column of the tile.
    const int n0 = tile.n_block * static_cast<int>(BN);
    const float* sb_row =
        b_scales +
        (static_cast<size_t>(tile.group) * num_w_blocks_n + n0 / static_cast<int>(kWBlock)) *
            static_cast<size_t>(k_blocks);
    float sb_next = __ldg(sb_row);

    for (int kb = 0; kb < k_blocks; ++kb) {
      // Issue the next block's weight-scale load now; it lands while this block's MMAs run.
      const float sb = sb_next;
      if (kb + 1 < k_blocks) sb_next = __ldg(sb_row + kb + 1);

      dsv3::mbar_wait(&full_bar[stage], phase, "fp8_gemm wgmma consumer (full slot)");

      // A scales of this thread's two rows, read before the stage is released (the producer
      // refills the stage once all 8 warps arrived on empty).
      const float* sa = reinterpret_cast<const float*>(smem + Cfg::kOffSa + stage * Cfg::kSaBytes);
      const float sa0 = sa[sa_idx0];
      const float sa1 = sa[sa_idx1];

      const uint32_t a_addr = smem_base + Cfg::kOffA + stage * Cfg::kABytes + a_wg_off;
      const uint32_t b_addr = smem_base + Cfg::kOffB + stage * Cfg::kBBytes + b_wg_off;
      dsv3::warpgroup_fence_operand(partial);
      dsv3::wgmma_fence();
#pragma unroll
      for (uint32_t s = 0; s < kBlockK / 32; ++s) {
        // K step s = bytes 32s..32s+31 of every 128-byte row: advance the descriptors' start
        // address by 32 bytes; the hardware applies the 128B XOR swizzle to the final address,
        // matching what TMA wrote (same scheme as hopper_wgmma_e4m3_selftest).
        const uint64_t desc_a = dsv3::make_smem_desc_k_sw128(a_addr + s * 32);
        const uint64_t desc_b = dsv3::make_smem_desc_k_sw128(b_addr + s * 32);
        dsv3::wgmma_m64nNk32_e4m3<Cfg::kWN>(partial, desc_a, desc_b, /*accumulate=*/s > 0);
      }
      dsv3::wgmma_commit_group();
      dsv3::wgmma_wait_group<0>();
      dsv3::warpgroup_fence_operand(partial);

      const float scale0 = sa0 * sb;  // rows r0     (fragment entries i with (i / 2) even)
      const float scale1 = sa1 * sb;  // rows r0 + 8 (fragment entries i with (i / 2) odd)

      // Release the stage: the MMAs reading it are complete (wait_group 0) and this warp's A-scale
      // loads were issued before the wgmma fence. One arrival per warp once all its lanes are here.
      __syncwarp();
      if (lane == 0) dsv3::mbar_arrive(&empty_bar[stage]);

      // Promotion into the f32 total.
#pragma unroll
      for (uint32_t i = 0; i < Cfg::kAccRegs; ++i) {
        total[i] = fmaf(partial[i], (i & 2u) ? scale1 : scale0, total[i]);
      }

      if (++stage == STAGES) {
        stage = 0;
        phase ^= 1u;
      }
    }

    // ---------------------------------------------------------------- epilogue (per warpgroup)
    // Rows and columns this WG owns, and how many of them exist: rows past M / masked_m[g] and
    // columns past N are neither read (residual) nor written.
    const int tile_row = tile.m_block * static_cast<int>(BM) + static_cast<int>(wg_m * 64);
    const int rows_valid = min(64, tile.rows - tile_row);
    const int col0 = n0 + static_cast<int>(wg_n * Cfg::kWN);
    const int cols_valid = min(static_cast<int>(Cfg::kWN), n - col0);
    // Uniform across the warpgroup, so the named barriers below stay matched.
    if (rows_valid <= 0 || cols_valid <= 0) continue;

    const int64_t out_row0 =
        (kKind == GemmKind::kGroupedMasked ? static_cast<int64_t>(tile.group) * m : int64_t{0}) +
        tile_row;
    uint8_t* c_smem = smem + Cfg::kOffC + wg * Cfg::kCBytesPerWg;
    constexpr uint32_t kChunksPerRow = Cfg::kWN / 8;  // 16-byte chunks (8 bf16) per row
    constexpr uint32_t kChunks = 64 * kChunksPerRow;
    static_assert(kChunks % 128 == 0, "whole copy rounds per warpgroup");
    const uint32_t barrier_id = 1 + wg;  // 0 is __syncthreads

    // Grouped contiguous: a group's last tile may end in padding rows (index -1), which the layout
    // says stay unwritten; every other kind stores all rows below rows_valid.
    auto row_in_group = [&](int row) {
      return kKind != GemmKind::kGroupedContiguous ||
             __ldg(group_info + out_row0 + row) == tile.group;
    };

    // The previous tile's copy-out (other threads of this WG) has finished reading c_smem.
    dsv3::named_barrier_sync(barrier_id, 128);

    // Optional residual: stage its valid part through c_smem with coalesced 16-byte loads, so
    // each thread can add it to its fragment in f32 and round once.
    const bool has_residual = residual != nullptr;
    if (has_residual) {
#pragma unroll
      for (uint32_t c = t; c < kChunks; c += 128) {
        const int row = static_cast<int>(c / kChunksPerRow);
        const int col = static_cast<int>(c % kChunksPerRow) * 8;
        if (row < rows_valid && col < cols_valid) {
          const uint4 v = __ldg(reinterpret_cast<const uint4*>(
              residual + (out_row0 + row) * static_cast<int64_t>(n) + col0 + col));
          *reinterpret_cast<uint4*>(c_smem + row * Cfg::kCStride + col * 2) = v;
        }
      }
      dsv3::named_barrier_sync(barrier_id, 128);
    }

    // Fragment -> c_smem as bf16 pairs; entries i, i + 1 are columns col, col + 1 of one row. Each
    // thread reads (residual) and then overwrites the same 4 bytes, so in place is safe.
#pragma unroll
    for (uint32_t i = 0; i < Cfg::kAccRegs; i += 2) {
      const int row = dsv3::wgmma_acc_row(static_cast<int>(t), static_cast<int>(i));
      const int col = dsv3::wgmma_acc_col(static_cast<int>(t), static_cast<int>(i));
      __nv_bfloat162* p = reinterpret_cast<__nv_bfloat162*>(c_smem + row * Cfg::kCStride + col * 2);
      float v0 = total[i];
      float v1 = total[i + 1];
      if (has_residual) {
        // Garbage for rows / columns that were not loaded; those are never stored.
        const float2 r = __bfloat1622float2(*p);
        v0 += r.x;
        v1 += r.y;
      }
      *p = __floats2bfloat162_rn(v0, v1);  // .x (low half) = column col
    }
    dsv3::named_barrier_sync(barrier_id, 128);

    // Coalesced copy-out: consecutive threads write consecutive 16-byte chunks of a row. N is a
    // multiple of 16 and col0 of 32, so a chunk is either wholly inside N or wholly outside.
#pragma unroll
    for (uint32_t c = t; c < kChunks; c += 128) {
      const int row = static_cast<int>(c / kChunksPerRow);
      const int col = static_cast<int>(c % kChunksPerRow) * 8;
      if (row < rows_valid && col < cols_valid && row_in_group(row)) {
        const uint4 v = *reinterpret_cast<const uint4*>(c_smem + row * Cfg::kCStride + col * 2);
        *reinterpret_cast<uint4*>(d + (out_row0 + row) * static_cast<int64_t>(n) + col0 + col) = v;
      }
    }
  }
}

}  // namespace fp8_gemm
