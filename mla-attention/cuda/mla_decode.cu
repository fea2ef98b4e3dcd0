// Absorbed-weight MLA decode attention over the paged BF16 KV cache (spec §3.1, §5). The
// contract is mla-attention/src/reference/paged.rs (`paged_decode`); the launch wrappers and the
// host-side shape checks are mla-attention/src/gpu.rs.
//
// Three kernels, all graph-capturable (no host round trip between them):
//
// 1. mla_decode_plan (one thread): the split-KV schedule from cache_seqlens, FlashMLA-style. The
//    work of sequence b is n_b = ceil(len_b / 64) KV blocks plus a fixed overhead kFixedCost
//    (Q load, epilogue, combine). The concatenation of all (b, block) pairs is cut into
//    `num_parts` contiguous ranges of about sum(n_b + F) / num_parts + F units each; part p is
//    one CTA column of the decode grid, so ragged lengths are balanced over the SMs. A sequence
//    cut over several parts gets one split per part; split_offsets[b] .. split_offsets[b + 1]
//    number its splits. Lengths outside [S_q, max_blocks * 64] record kStatusMlaOutOfRange and are
//    clamped into [0, max_blocks * 64] (so no table entry past the row is ever read).
//
// 2. mla_decode_bf16: grid (row_tiles, num_parts), 256 threads, 1 CTA / SM, 225 KiB shared.
//    The S_q * H query rows of a sequence (row = i * H + h, contiguous in q) are the M dimension,
//    cut into 64-row tiles. Per (part, sequence) the CTA holds the Q tile [64, 576] in shared
//    memory and streams the part's KV blocks [64 tokens, 576] through a 2-stage cp.async ring
//    (the next block's load overlaps the current block's math). 8 warps = 4 row groups (16 rows)
//    x 2 halves; warp (g, c):
//      S = Q[16 rows] . K[tokens 32c .. 32c + 32]^T over all 576 columns (mma.sync m16n8k16 BF16,
//          f32 accumulate, ldmatrix from an XOR-swizzled tile: conflict-free);
//      online softmax in f32 (base-2 exponent, scores pre-multiplied by scale * log2 e); the two
//          halves exchange their row maxima through shared memory (both then track the same
//          running max, so the row sums stay per-half and are added once at the end);
//      P (BF16) goes to shared memory so each warp sees all 64 tokens of its rows;
//      O[16 rows, 256 columns 256c ..] += P[16, 64] . V[64, 256] (V = the first 512 columns of
//          the same KV tile, ldmatrix.trans).
//    Tokens past the row's causal limit (query i sees positions < len - S_q + i + 1) are masked;
//    slots past len are zero-filled, never read. A block id outside [0, num_blocks) records
//    kStatusMlaOutOfRange, its tokens are masked and nothing is read from it.
//    A sequence wholly inside the part writes o_lat (BF16) and lse directly; otherwise the split
//    writes its normalised partial (f32) and its lse to the workspace.
//
// 3. mla_decode_combine: grid (S_q * H, batch), 128 threads: for sequences with more than one
//    split, o = sum_s exp(lse_s - lse) o_s with lse = log sum_s exp(lse_s) (flash-decoding).
//
// Empty softmax (a split that sees no visible token of a row): partial o = 0, lse = -inf; the
// combine gives it weight 0.

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "dsv3/common.cuh"
#include "dsv3/hopper.cuh"

using namespace dsv3;

namespace mla {

constexpr int kBlockSize = 64;    // tokens per cache block
constexpr int kKvDim = 576;       // [c_kv (512) ; k_pe (64)]
constexpr int kVDim = 512;        // value width (first 512 columns)
constexpr int kRowsPerTile = 64;  // query rows per CTA
constexpr int kThreads = 256;
constexpr int kChunks = kKvDim * 2 / 16;  // 16-byte chunks per row: 72
constexpr int kRowBytes = kKvDim * 2;     // 1152
constexpr int kTileBytes = kRowsPerTile * kRowBytes;  // 73728 (Q tile and one KV stage)
constexpr int kStages = 2;
constexpr int kPBytes = kRowsPerTile * kBlockSize * 2;  // 8192: P [64 rows, 64 tokens] BF16
constexpr int kRedBytes = 2 * 2 * kRowsPerTile * 4;     // row max / row sum of both halves
constexpr int kSmemBytes = kTileBytes * (1 + kStages) + kPBytes + kRedBytes;  // 230400
constexpr int kFixedCost = 5;  // scheduler overhead per (part, sequence) piece, in KV blocks
constexpr int kSchedInts = 5;  // begin_b, begin_block, begin_split, end_b, end_block
constexpr float kLn2 = 0.6931471805599453f;

static_assert(kChunks % 8 == 0, "the XOR swizzle permutes chunks within groups of 8");
static_assert(kSmemBytes <= 232448, "over the 227 KiB opt-in limit of sm_90");

// Byte offset of 16-byte chunk `c` of row `r` in a swizzled [rows, 72 chunks] tile.
__device__ __forceinline__ uint32_t tile_off(int r, int c) {
  return static_cast<uint32_t>(r * kRowBytes + ((c ^ (r & 7)) << 4));
}
// Same for the P tile [64 rows, 8 chunks].
__device__ __forceinline__ uint32_t p_off(int r, int c) {
  return static_cast<uint32_t>(r * 128 + ((c ^ (r & 7)) << 4));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// D (16x8 f32) += A (16x16 bf16, row) . B (16x8 bf16, col).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// One part of the schedule (mla_decode_plan writes kSchedInts ints per part).
struct Sched {
  int begin_b, begin_block, begin_split, end_b, end_block;
};

}  // namespace mla

using namespace mla;

extern "C" __global__ void mla_decode_plan(const int* __restrict__ cache_seqlens, int batch,
                                           int s_q, int max_blocks, int num_parts,
                                           int* __restrict__ sched, int* __restrict__ split_offsets,
                                           int* __restrict__ lens, int* status) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const long long capacity = static_cast<long long>(max_blocks) * kBlockSize;
  long long total = 0;
  for (int b = 0; b < batch; ++b) {
    int len = cache_seqlens[b];
    if (len < s_q || static_cast<long long>(len) > capacity) {
      record_status(status, kStatusMlaOutOfRange);
      len = len < 0 ? 0 : (static_cast<long long>(len) > capacity ? static_cast<int>(capacity) : len);
    }
    lens[b] = len;
    total += ceil_div(len, kBlockSize) + kFixedCost;
  }
  const long long payload = (total + num_parts - 1) / num_parts + kFixedCost;
  int b = 0, blk = 0, split = 0, cum = 0;
  split_offsets[0] = 0;
  for (int p = 0; p < num_parts; ++p) {
    int* s = sched + p * kSchedInts;
    s[0] = b;
    s[1] = blk;
    s[2] = split;
    int end_b = -1, end_block = 0;
    long long remain = (p == num_parts - 1) ? (1ll << 62) : payload;  // the last part takes the rest
    while (b < batch) {
      const int n = ceil_div(lens[b], kBlockSize);
      const int left = n - blk;
      if (remain >= static_cast<long long>(left) + kFixedCost) {
        end_b = b;
        end_block = n;
        cum += split + 1;
        split_offsets[b + 1] = cum;
        remain -= left + kFixedCost;
        ++b;
        blk = 0;
        split = 0;
      } else {
        const long long take = remain - kFixedCost;
        if (take > 0) {
          blk += static_cast<int>(take);
          end_b = b;
          end_block = blk;
          ++split;
        }
        break;
      }
    }
    s[3] = end_b;
    s[4] = end_block;
  }
}

// grid (row_tiles, num_parts), kThreads threads, kSmemBytes dynamic shared memory.
extern "C" __global__ void __launch_bounds__(kThreads, 1)
    mla_decode_bf16(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ cache,
                    const int* __restrict__ block_table, const int* __restrict__ sched,
                    const int* __restrict__ split_offsets, const int* __restrict__ lens,
                    __nv_bfloat16* __restrict__ o_lat, float* __restrict__ lse,
                    float* __restrict__ o_accum, float* __restrict__ lse_accum, int* status,
                    int s_q, int heads, int max_blocks, int num_blocks, float scale_log2) {
  if (dynamic_smem_size() < static_cast<uint32_t>(kSmemBytes)) __trap();
  extern __shared__ __align__(1024) uint8_t smem[];
  uint8_t* q_tile = smem;
  uint8_t* kv_tiles = smem + kTileBytes;
  uint8_t* p_tile = smem + kTileBytes * (1 + kStages);
  float* red_max = reinterpret_cast<float*>(p_tile + kPBytes);  // [2 halves][64 rows]
  float* red_sum = red_max + 2 * kRowsPerTile;                  // [2 halves][64 rows]

  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;
  const int rg = warp & 3;   // row group: rows 16 rg .. 16 rg + 16 of the tile
  const int half = warp >> 2;  // tokens 32 half .. (scores), value columns 256 half .. (output)
  const int m_rows = s_q * heads;
  const int tile_row0 = blockIdx.x * kRowsPerTile;
  const uint32_t q_base = smem_u32(q_tile);
  const uint32_t kv_base = smem_u32(kv_tiles);
  const uint32_t p_base = smem_u32(p_tile);

  const Sched sc = *reinterpret_cast<const Sched*>(sched + blockIdx.y * kSchedInts);

  // The two rows (within the tile) this thread's accumulator fragments belong to.
  const int r_lo = rg * 16 + (lane >> 2);
  const int r_hi = r_lo + 8;

  for (int b = sc.begin_b; b <= sc.end_b; ++b) {
    const int len = lens[b];
    const int n_blocks = ceil_div(len, kBlockSize);
    const int lo = (b == sc.begin_b) ? sc.begin_block : 0;
    const int hi = (b == sc.end_b) ? sc.end_block : n_blocks;
    if (lo >= hi) continue;
    const int split = (b == sc.begin_b) ? sc.begin_split : 0;
    const int num_splits = split_offsets[b + 1] - split_offsets[b];
    const int* table_row = block_table + static_cast<long long>(b) * max_blocks;

    // Everyone is done with the previous sequence's Q, KV stages and exchange buffers.
    __syncthreads();

    // Q tile: rows past m_rows are zero.
    {
      const __nv_bfloat16* q_seq = q + static_cast<long long>(b) * m_rows * kKvDim;
      for (int idx = tid; idx < kRowsPerTile * kChunks; idx += kThreads) {
        const int r = idx / kChunks, c = idx % kChunks;
        const int row = tile_row0 + r;
        const bool ok = row < m_rows;
        const __nv_bfloat16* src = ok ? q_seq + static_cast<long long>(row) * kKvDim + c * 8 : q;
        cp_async_16(q_tile + tile_off(r, c), src, ok ? 16u : 0u);
      }
    }

    // Loads KV block j (of the sequence) into stage `st`; returns whether its id was valid.
    auto load_kv = [&](int j, int st) {
      const int id = table_row[j];
      const bool valid = id >= 0 && id < num_blocks;
      if (!valid && tid == 0) record_status(status, kStatusMlaOutOfRange);
      uint8_t* dst = kv_tiles + st * kTileBytes;
      const __nv_bfloat16* blk =
          cache + static_cast<long long>(valid ? id : 0) * kBlockSize * kKvDim;
      const int tokens = valid ? min(kBlockSize, len - j * kBlockSize) : 0;
      for (int idx = tid; idx < kBlockSize * kChunks; idx += kThreads) {
        const int t = idx / kChunks, c = idx % kChunks;
        const bool ok = t < tokens;
        const __nv_bfloat16* src = ok ? blk + t * kKvDim + c * 8 : cache;
        cp_async_16(dst + tile_off(t, c), src, ok ? 16u : 0u);
      }
      cp_async_commit();
    };

    load_kv(lo, 0);  // commits the Q copies in the same group

    // Causal limits of this thread's two rows (positions < limit are visible).
    const int row_lo = tile_row0 + r_lo, row_hi = tile_row0 + r_hi;
    const int lim_lo = row_lo < m_rows ? len - s_q + row_lo / heads + 1 : 0;
    const int lim_hi = row_hi < m_rows ? len - s_q + row_hi / heads + 1 : 0;

    float m_run[2] = {-INFINITY, -INFINITY};  // running max (log2 domain) of rows lo / hi
    float l_run[2] = {0.f, 0.f};              // this half's running sum
    float acc[32][4];
#pragma unroll
    for (int n = 0; n < 32; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

    for (int j = lo; j < hi; ++j) {
      const int st = (j - lo) & 1;
      cp_async_wait<0>();
      __syncthreads();  // block j visible to all; all warps finished block j - 1
      if (j + 1 < hi) load_kv(j + 1, st ^ 1);
      const int id = table_row[j];
      const bool valid = id >= 0 && id < num_blocks;
      const uint32_t kv = kv_base + st * kTileBytes;

      // ---- S = Q K^T for rows 16 rg .., tokens 32 half .. (4 n-tiles of 8 tokens)
      float s[4][4];
#pragma unroll
      for (int n = 0; n < 4; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
      const int a_row = rg * 16 + (lane & 15);
      const int a_chunk_hi = lane >> 4;
      const int b_tok = half * 32 + ((lane >> 4) << 3) + (lane & 7);
      const int b_chunk_hi = (lane >> 3) & 1;
#pragma unroll 4
      for (int ks = 0; ks < kKvDim / 16; ++ks) {
        uint32_t a[4], b01[4], b23[4];
        ldmatrix_x4(q_base + tile_off(a_row, 2 * ks + a_chunk_hi), a);
        ldmatrix_x4(kv + tile_off(b_tok, 2 * ks + b_chunk_hi), b01);
        ldmatrix_x4(kv + tile_off(b_tok + 16, 2 * ks + b_chunk_hi), b23);
        mma_bf16(s[0], a, b01[0], b01[1]);
        mma_bf16(s[1], a, b01[2], b01[3]);
        mma_bf16(s[2], a, b23[0], b23[1]);
        mma_bf16(s[3], a, b23[2], b23[3]);
      }

      // ---- scale, mask, this half's row maxima
      const int pos0 = j * kBlockSize + half * 32 + 2 * (lane & 3);
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < 4; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int pos = pos0 + n * 8 + (e & 1);
          const int lim = (e < 2) ? lim_lo : lim_hi;
          const float v = (valid && pos < lim) ? s[n][e] * scale_log2 : -INFINITY;
          s[n][e] = v;
          mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
        mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      }
      if ((lane & 3) == 0) {
        red_max[half * kRowsPerTile + r_lo] = mx[0];
        red_max[half * kRowsPerTile + r_hi] = mx[1];
      }
      named_barrier_sync(1 + rg, 64);  // the two warps of row group rg
      float alpha[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = h ? r_hi : r_lo;
        const float other = red_max[(half ^ 1) * kRowsPerTile + r];
        const float m_new = fmaxf(m_run[h], fmaxf(mx[h], other));
        // m_new == -inf: nothing visible yet; keep everything at zero.
        const float m_ref = m_new == -INFINITY ? 0.f : m_new;
        alpha[h] = exp2f(m_run[h] - m_ref);
        m_run[h] = m_new;
        mx[h] = m_ref;
      }

      // ---- P = exp2(S - m), row sums, P to shared memory (BF16)
      float rs[2] = {0.f, 0.f};
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const float p0 = exp2f(s[n][0] - mx[0]);
        const float p1 = exp2f(s[n][1] - mx[0]);
        const float p2 = exp2f(s[n][2] - mx[1]);
        const float p3 = exp2f(s[n][3] - mx[1]);
        rs[0] += p0 + p1;
        rs[1] += p2 + p3;
        const int tok = half * 32 + n * 8 + 2 * (lane & 3);
        const int c = tok >> 3, within = (tok & 7) * 2;
        *reinterpret_cast<uint32_t*>(p_tile + p_off(r_lo, c) + within) = pack_bf16x2(p0, p1);
        *reinterpret_cast<uint32_t*>(p_tile + p_off(r_hi, c) + within) = pack_bf16x2(p2, p3);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        rs[h] += __shfl_xor_sync(0xffffffffu, rs[h], 1);
        rs[h] += __shfl_xor_sync(0xffffffffu, rs[h], 2);
        l_run[h] = l_run[h] * alpha[h] + rs[h];
      }
#pragma unroll
      for (int n = 0; n < 32; ++n) {
        acc[n][0] *= alpha[0];
        acc[n][1] *= alpha[0];
        acc[n][2] *= alpha[1];
        acc[n][3] *= alpha[1];
      }
      named_barrier_sync(1 + rg, 64);  // P of both halves written

      // ---- O[16 rows, 256 cols] += P[16, 64] V[64, 256 cols]
      const int v_tok = ((lane >> 3) & 1) * 8 + (lane & 7);
      const int v_chunk_hi = lane >> 4;
#pragma unroll
      for (int ks = 0; ks < kBlockSize / 16; ++ks) {
        uint32_t a[4];
        ldmatrix_x4(p_base + p_off(a_row, 2 * ks + a_chunk_hi), a);
#pragma unroll
        for (int np = 0; np < 16; ++np) {
          uint32_t bv[4];
          const int chunk = half * 32 + np * 2 + v_chunk_hi;  // 8 columns per chunk
          ldmatrix_x4_trans(kv + tile_off(ks * 16 + v_tok, chunk), bv);
          mma_bf16(acc[2 * np], a, bv[0], bv[1]);
          mma_bf16(acc[2 * np + 1], a, bv[2], bv[3]);
        }
      }
    }

    // ---- epilogue: total row sums over both halves, normalise, store
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if ((lane & 3) == 0) red_sum[half * kRowsPerTile + (h ? r_hi : r_lo)] = l_run[h];
    }
    named_barrier_sync(1 + rg, 64);
    float inv[2], row_lse[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = h ? r_hi : r_lo;
      const float l = l_run[h] + red_sum[(half ^ 1) * kRowsPerTile + r];
      const bool empty = !(l > 0.f);
      inv[h] = empty ? 0.f : 1.f / l;
      row_lse[h] = empty ? -INFINITY : (m_run[h] + log2f(l)) * kLn2;
    }
    const int col0 = half * 256 + 2 * (lane & 3);
    if (num_splits == 1) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = tile_row0 + (h ? r_hi : r_lo);
        if (row >= m_rows) continue;
        const long long out_row = static_cast<long long>(b) * m_rows + row;
        __nv_bfloat16* dst = o_lat + out_row * kVDim + col0;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<uint32_t*>(dst + n * 8) =
              pack_bf16x2(acc[n][2 * h] * inv[h], acc[n][2 * h + 1] * inv[h]);
        }
        if (half == 0 && (lane & 3) == 0) lse[out_row] = row_lse[h];
      }
    } else {
      const long long split_row0 = static_cast<long long>(split_offsets[b] + split) * m_rows;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = tile_row0 + (h ? r_hi : r_lo);
        if (row >= m_rows) continue;
        float* dst = o_accum + (split_row0 + row) * kVDim + col0;
#pragma unroll
        for (int n = 0; n < 32; ++n) {
          *reinterpret_cast<float2*>(dst + n * 8) =
              make_float2(acc[n][2 * h] * inv[h], acc[n][2 * h + 1] * inv[h]);
        }
        if (half == 0 && (lane & 3) == 0) lse_accum[split_row0 + row] = row_lse[h];
      }
    }
  }
}

// grid (S_q * H, batch), 128 threads: each thread 4 of the 512 columns.
extern "C" __global__ void __launch_bounds__(128)
    mla_decode_combine(const int* __restrict__ split_offsets, const float* __restrict__ o_accum,
                       const float* __restrict__ lse_accum, __nv_bfloat16* __restrict__ o_lat,
                       float* __restrict__ lse, int m_rows) {
  const int row = blockIdx.x, b = blockIdx.y;
  const int first = split_offsets[b];
  const int n = split_offsets[b + 1] - first;
  if (n <= 1) return;  // written by mla_decode_bf16
  float mx = -INFINITY;
  for (int s = 0; s < n; ++s) {
    mx = fmaxf(mx, lse_accum[static_cast<long long>(first + s) * m_rows + row]);
  }
  const long long out_row = static_cast<long long>(b) * m_rows + row;
  const int col = threadIdx.x * 4;
  float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
  float sum = 0.f;
  if (mx != -INFINITY) {
    for (int s = 0; s < n; ++s) {
      const long long srow = static_cast<long long>(first + s) * m_rows + row;
      const float w = expf(lse_accum[srow] - mx);
      sum += w;
      const float4 v = *reinterpret_cast<const float4*>(o_accum + srow * kVDim + col);
      o.x += w * v.x;
      o.y += w * v.y;
      o.z += w * v.z;
      o.w += w * v.w;
    }
  }
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(o_lat + out_row * kVDim + col);
  dst[0] = __floats2bfloat162_rn(o.x * inv, o.y * inv);
  dst[1] = __floats2bfloat162_rn(o.z * inv, o.w * inv);
  if (threadIdx.x == 0) lse[out_row] = sum > 0.f ? mx + logf(sum) : -INFINITY;
}
