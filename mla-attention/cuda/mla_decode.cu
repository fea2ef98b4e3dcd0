// Absorbed-weight MLA decode attention over the paged KV cache (spec §3.1, §5), BF16 or FP8
// entries. The contract is mla-attention/src/reference/paged.rs (`paged_decode`) and, for the FP8
// cache, reference/fp8_cache.rs (`paged_decode_fp8`); the launch wrappers and the host-side shape
// checks are mla-attention/src/gpu.rs.
//
// Four kernels, all graph-capturable (no host round trip between them):
//
// 1. mla_decode_plan (one thread): the split-KV schedule from cache_seqlens, FlashMLA-style. The
//    work of sequence b is n_b = ceil(len_b / 64) KV blocks plus a fixed overhead kFixedCost
//    (Q load, epilogue, combine). The concatenation of all (b, block) pairs is cut into
//    `num_parts` contiguous ranges of about sum(n_b + F) / num_parts + F units each; part p is
//    one CTA column of the decode grid, so ragged lengths are balanced over the SMs. A sequence
//    cut over several parts gets one split per part; split_offsets[b] .. split_offsets[b + 1]
//    number its splits. Lengths outside [S_q, max_blocks * 64] record kStatusMlaOutOfRange and are
//    clamped into [0, max_blocks * 64] (so no table entry past the row is ever read); a sequence
//    left with no token gets o = 0, lse = -inf.
//
// 2. mla_decode_bf16 / mla_decode_fp8: grid (row_tiles, num_parts), 256 threads = 2 warpgroups,
//    1 CTA / SM. The S_q * H query rows of a sequence (row = i * H + h, contiguous in q) are the M
//    dimension, cut into 64-row tiles (one wgmma M). Per (part, sequence) the CTA holds the Q tile
//    [64, 576] in shared memory and streams the part's KV blocks [64 tokens, 576] through it:
//      BF16 cache: a 2-stage cp.async ring of BF16 tiles (block j + 1 loads during block j's math);
//      FP8 cache: one staging buffer of raw 656-byte entries (block j + 1 loads during block j's
//        math) that the CTA dequantizes (e4m3 * scale, rounded to BF16 once, as
//        reference::decode_cache_bf16) into a single BF16 tile; the math is then the same.
//    Warpgroup c (of 2) and its warp w (of 4, rows 16w .. 16w + 16):
//      S[64 rows, tokens 32c .. 32c + 32] = Q . K^T over all 576 columns: wgmma m64n32k16, both
//          operands K-major from 128B-swizzled shared memory (36 k-steps);
//      online softmax in f32 (base-2 exponent, scores pre-multiplied by scale * log2 e); the two
//          warpgroups exchange their row maxima through shared memory (both then track the same
//          running max, so the row sums stay per-warpgroup and are added once at the end);
//      P (BF16) goes to shared memory (K-major, 128B swizzle) so each warpgroup sees all 64 tokens;
//      O[64 rows, columns 256c .. 256c + 256] += P[64, 64] . V[64, 256]: wgmma m64n256k16 with V
//          (the first 512 columns of the same KV tile, [token, column] rows) as an N-major
//          ("transposed") B operand, 4 k-steps.
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
//
// Shared-memory tiles. Every [64 rows, 576 columns] BF16 tile (Q, KV) is stored as 9 column
// blocks of [64 rows, 64 columns]: 128-byte rows, 128B-swizzled (16-byte chunk index XOR row % 8),
// 8 KiB per block, each block 1024-byte aligned. That one layout is at once the K-major operand
// layout wgmma wants for Q and K (k16 step = +32 bytes inside a row, next 64 columns = next block)
// and the N-major one for V (row = token = the K index of P . V; 64 value columns per block).
// The P tile [64 rows, 64 tokens] is one such block.

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <math.h>
#include <stdint.h>

#include "dsv3/common.cuh"
#include "dsv3/hopper.cuh"

using namespace dsv3;

namespace mla {

constexpr int kBlockSize = 64;    // tokens per cache block
constexpr int kKvDim = 576;       // [c_kv (512) ; k_pe (64)]
constexpr int kVDim = 512;        // value width (first 512 columns)
constexpr int kRowsPerTile = 64;  // query rows per CTA = wgmma M
constexpr int kThreads = 256;     // 2 warpgroups
constexpr int kChunks = kKvDim * 2 / 16;             // 16-byte chunks per row: 72
constexpr int kColBlockBytes = 64 * 128;             // one [64 rows, 64 columns] block: 8192
constexpr int kTileBytes = kChunks / 8 * kColBlockBytes;  // 9 blocks: 73728
constexpr int kPBytes = kColBlockBytes;              // P [64 rows, 64 tokens] BF16
constexpr int kRedBytes = 2 * 2 * kRowsPerTile * 4;  // row max / row sum of both warpgroups
constexpr int kAlignSlack = 1024;  // dynamic smem is only 16-byte aligned; tiles need 1024

// FP8 cache entry (reference/fp8_cache.rs): 512 e4m3 codes, 4 f32 scales (one per 128 latent
// values), 64 BF16 rope values.
constexpr int kFp8EntryBytes = 656;
constexpr int kFp8ScalesOffset = 512;
constexpr int kFp8RopeOffset = 528;
constexpr int kFp8EntryChunks = kFp8EntryBytes / 16;  // 41
constexpr int kFp8StageBytes = kBlockSize * kFp8EntryBytes;  // 41984

// BF16: Q + 2 KV stages. FP8: Q + 1 BF16 KV tile + 1 raw staging buffer (two of each would not
// fit in 227 KiB).
constexpr int kSmemBf16 = kTileBytes * 3 + kPBytes + kRedBytes + kAlignSlack;  // 231424
constexpr int kSmemFp8 = kTileBytes * 2 + kFp8StageBytes + kPBytes + kRedBytes + kAlignSlack;

constexpr int kFixedCost = 5;  // scheduler overhead per (part, sequence) piece, in KV blocks
constexpr int kSchedInts = 5;  // begin_b, begin_block, begin_split, end_b, end_block
constexpr float kLn2 = 0.6931471805599453f;

static_assert(kChunks % 8 == 0, "tiles are whole 64-column blocks");
static_assert(kFp8EntryBytes % 16 == 0, "FP8 entries are copied in 16-byte chunks");
static_assert(kSmemBf16 <= 232448 && kSmemFp8 <= 232448, "over the 227 KiB opt-in limit of sm_90");

// Byte offset of 16-byte chunk `c` (columns 8c .. 8c + 8) of row `r` in a [64 rows, 576] tile.
__device__ __forceinline__ uint32_t tile_off(int r, int c) {
  return static_cast<uint32_t>((c >> 3) * kColBlockBytes + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}
// Same for the P tile [64 rows, 8 chunks].
__device__ __forceinline__ uint32_t p_off(int r, int c) {
  return static_cast<uint32_t>(r * 128 + ((c ^ (r & 7)) << 4));
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


// ---------------------------------------------------------------------------------------------
// KV block loads (cp.async; the caller commits the group)
// ---------------------------------------------------------------------------------------------

// BF16 cache: the first `tokens` entries of block `id` into the swizzled tile `dst`; the rest of
// the tile is zero-filled without reading.
__device__ __forceinline__ void load_kv_bf16(uint8_t* dst, const __nv_bfloat16* cache, int id,
                                             int tokens, int tid) {
  const __nv_bfloat16* blk = cache + static_cast<long long>(id) * kBlockSize * kKvDim;
  for (int idx = tid; idx < kBlockSize * kChunks; idx += kThreads) {
    const int t = idx / kChunks, c = idx % kChunks;
    const bool ok = t < tokens;
    const __nv_bfloat16* src = ok ? blk + t * kKvDim + c * 8 : cache;
    cp_async_16(dst + tile_off(t, c), src, ok ? 16u : 0u);
  }
}

// FP8 cache: the raw 656-byte entries of block `id` into the linear staging buffer [64, 656];
// slots past `tokens` are zero-filled (codes and scales 0, so they dequantize to 0).
__device__ __forceinline__ void load_kv_fp8_raw(uint8_t* staging, const uint8_t* cache, int id,
                                                int tokens, int tid) {
  const uint8_t* blk = cache + static_cast<long long>(id) * kBlockSize * kFp8EntryBytes;
  for (int idx = tid; idx < kBlockSize * kFp8EntryChunks; idx += kThreads) {
    const int t = idx / kFp8EntryChunks, c = idx % kFp8EntryChunks;
    const bool ok = t < tokens;
    const uint8_t* src = ok ? blk + t * kFp8EntryBytes + c * 16 : cache;
    cp_async_16(staging + t * kFp8EntryBytes + c * 16, src, ok ? 16u : 0u);
  }
}

// Two e4m3 codes (low byte first) -> two floats, exactly (e4m3 -> f16 is exact).
__device__ __forceinline__ float2 e4m3x2_to_float2(uint16_t codes) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(codes, __NV_E4M3);
  return __half22float2(*reinterpret_cast<const __half2*>(&h));
}

// Dequantizes the staged entries into the BF16 tile: latent value k of a token becomes
// bf16(e4m3(code_k) * scale_{k / 128}) (f32 product, one rounding: reference::decode_cache_bf16);
// the rope values are copied.
__device__ __forceinline__ void dequant_fp8_tile(uint8_t* tile, const uint8_t* staging, int tid) {
  for (int idx = tid; idx < kBlockSize * kChunks; idx += kThreads) {
    const int t = idx / kChunks, c = idx % kChunks;  // chunk c = columns 8c .. 8c + 8
    const uint8_t* entry = staging + t * kFp8EntryBytes;
    uint4 out;
    if (c < kVDim / 8) {
      const float scale = *reinterpret_cast<const float*>(entry + kFp8ScalesOffset + 4 * (c >> 4));
      const uint2 codes = *reinterpret_cast<const uint2*>(entry + 8 * c);
      uint32_t words[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const uint32_t w = k < 2 ? codes.x : codes.y;
        const float2 v = e4m3x2_to_float2(static_cast<uint16_t>(w >> (16 * (k & 1))));
        words[k] = pack_bf16x2(v.x * scale, v.y * scale);
      }
      out = make_uint4(words[0], words[1], words[2], words[3]);
    } else {
      out = *reinterpret_cast<const uint4*>(entry + kFp8RopeOffset + 16 * (c - kVDim / 8));
    }
    *reinterpret_cast<uint4*>(tile + tile_off(t, c)) = out;
  }
}

// ---------------------------------------------------------------------------------------------
// The decode kernel body, shared by the BF16- and FP8-cache entry points
// ---------------------------------------------------------------------------------------------

template <bool kFp8>
__device__ __forceinline__ void decode_body(
    const __nv_bfloat16* __restrict__ q, const void* __restrict__ cache_ptr,
    const int* __restrict__ block_table, const int* __restrict__ sched,
    const int* __restrict__ split_offsets, const int* __restrict__ lens,
    __nv_bfloat16* __restrict__ o_lat, float* __restrict__ lse, float* __restrict__ o_accum,
    float* __restrict__ lse_accum, int* status, int s_q, int heads, int max_blocks,
    int num_blocks, float scale_log2) {
  constexpr int kSmemBytes = kFp8 ? kSmemFp8 : kSmemBf16;
  constexpr int kKvTiles = kFp8 ? 1 : 2;  // BF16 KV tiles (FP8: one, fed by the staging buffer)
  if (dynamic_smem_size() < static_cast<uint32_t>(kSmemBytes)) __trap();
  DSV3_DYNAMIC_SMEM(uint8_t, smem_raw);
  uint8_t* smem = smem_align_up<1024>(smem_raw);
  uint8_t* q_tile = smem;
  uint8_t* kv_tiles = q_tile + kTileBytes;
  uint8_t* staging = kv_tiles + kKvTiles * kTileBytes;  // FP8 only (0 bytes for BF16)
  uint8_t* p_tile = staging + (kFp8 ? kFp8StageBytes : 0);
  float* red_max = reinterpret_cast<float*>(p_tile + kPBytes);  // [2 warpgroups][64 rows]
  float* red_sum = red_max + 2 * kRowsPerTile;                  // [2 warpgroups][64 rows]

  const __nv_bfloat16* cache_bf16 = static_cast<const __nv_bfloat16*>(cache_ptr);
  const uint8_t* cache_fp8 = static_cast<const uint8_t*>(cache_ptr);

  const int tid = threadIdx.x;
  const int warp = tid >> 5, lane = tid & 31;
  const int rg = warp & 3;     // warp within its warpgroup: rows 16 rg .. 16 rg + 16 of the tile
  const int half = warp >> 2;  // warpgroup: tokens 32 half .. (scores), columns 256 half .. (output)
  const int m_rows = s_q * heads;
  const int tile_row0 = blockIdx.x * kRowsPerTile;
  const uint32_t q_base = smem_u32(q_tile);
  const uint32_t kv_base = smem_u32(kv_tiles);
  const uint32_t p_base = smem_u32(p_tile);

  const Sched sc = *reinterpret_cast<const Sched*>(sched + blockIdx.y * kSchedInts);

  // The two rows (within the tile) this thread's accumulator fragments belong to (the wgmma
  // accumulator layout, hopper.cuh: wgmma_acc_row).
  const int r_lo = rg * 16 + (lane >> 2);
  const int r_hi = r_lo + 8;

  for (int b = sc.begin_b; b <= sc.end_b; ++b) {
    const int len = lens[b];
    const int n_blocks = ceil_div(len, kBlockSize);
    const int lo = (b == sc.begin_b) ? sc.begin_block : 0;
    const int hi = (b == sc.end_b) ? sc.end_block : n_blocks;
    if (lo >= hi) {
      // An empty sequence (a length <= 0, already reported by the plan) has no KV block and so
      // no split that writes it: give its rows the empty-softmax result (o = 0, lse = -inf)
      // rather than leave them unwritten. Only its one part sees it with n_blocks == 0.
      if (n_blocks == 0) {
        for (int idx = tid; idx < kRowsPerTile * (kVDim / 2); idx += kThreads) {
          const int row = blockIdx.x * kRowsPerTile + idx / (kVDim / 2);
          if (row >= m_rows) continue;
          const long long out_row = static_cast<long long>(b) * m_rows + row;
          reinterpret_cast<uint32_t*>(o_lat + out_row * kVDim)[idx % (kVDim / 2)] = 0u;
          if (idx % (kVDim / 2) == 0) lse[out_row] = -INFINITY;
        }
      }
      continue;
    }
    const int split = (b == sc.begin_b) ? sc.begin_split : 0;
    const int num_splits = split_offsets[b + 1] - split_offsets[b];
    const int* table_row = block_table + static_cast<long long>(b) * max_blocks;

    // Everyone is done with the previous sequence's Q, KV tiles and exchange buffers.
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

    // Starts loading KV block j (of the sequence): BF16 into tile `st`, FP8 into the staging
    // buffer. A block id outside the cache is reported and read as empty.
    auto issue_load = [&](int j, int st) {
      const int id = table_row[j];
      const bool valid = id >= 0 && id < num_blocks;
      if (!valid && tid == 0) record_status(status, kStatusMlaOutOfRange);
      const int tokens = valid ? min(kBlockSize, len - j * kBlockSize) : 0;
      const int safe_id = valid ? id : 0;
      if constexpr (kFp8) {
        load_kv_fp8_raw(staging, cache_fp8, safe_id, tokens, tid);
      } else {
        load_kv_bf16(kv_tiles + st * kTileBytes, cache_bf16, safe_id, tokens, tid);
      }
      cp_async_commit();
    };

    issue_load(lo, 0);  // commits the Q copies in the same group

    // Causal limits of this thread's two rows (positions < limit are visible).
    const int row_lo = tile_row0 + r_lo, row_hi = tile_row0 + r_hi;
    const int lim_lo = row_lo < m_rows ? len - s_q + row_lo / heads + 1 : 0;
    const int lim_hi = row_hi < m_rows ? len - s_q + row_hi / heads + 1 : 0;

    float m_run[2] = {-INFINITY, -INFINITY};  // running max (log2 domain) of rows lo / hi
    float l_run[2] = {0.f, 0.f};              // this warpgroup's running sum
    // O accumulator, wgmma m64n256 layout: acc[4n + e] is row (e < 2 ? r_lo : r_hi), column
    // 256 half + 8n + 2 (lane % 4) + (e % 2).
    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.f;

    for (int j = lo; j < hi; ++j) {
      const int st = kFp8 ? 0 : (j - lo) & 1;
      cp_async_wait<0>();
      if constexpr (kFp8) {
        // Block j's raw entries visible to all; every warpgroup is done with block j - 1's tile.
        __syncthreads();
        dequant_fp8_tile(kv_tiles, staging, tid);
      }
      // This thread's shared-memory writes (cp.async, dequantization) -> the async proxy that
      // wgmma reads through; the barrier then publishes everyone's.
      fence_proxy_async_shared();
      __syncthreads();  // block j ready; all warps finished block j - 1; FP8: staging is free
      if (j + 1 < hi) issue_load(j + 1, st ^ 1);
      const int id = table_row[j];
      const bool valid = id >= 0 && id < num_blocks;
      const uint32_t kv = kv_base + st * kTileBytes;

      // ---- S[64 rows, this warpgroup's 32 tokens] = Q K^T: 36 k16 steps, 4 per column block.
      float s[16];
#pragma unroll
      for (int i = 0; i < 16; ++i) s[i] = 0.f;
      warpgroup_fence_operand(s);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kKvDim / 16; ++ks) {
        const uint32_t col = (ks >> 2) * kColBlockBytes + (ks & 3) * 32;
        const uint64_t desc_q = make_smem_desc_k_sw128(q_base + col);
        const uint64_t desc_k = make_smem_desc_k_sw128(kv + half * 32 * 128 + col);
        wgmma_m64nNk16_bf16<32>(s, desc_q, desc_k, true);
      }
      wgmma_commit_group();
      wgmma_wait_group<0>();
      warpgroup_fence_operand(s);

      // ---- scale, mask, this warpgroup's row maxima. s[4n + e]: token 8n + 2 (lane % 4) +
      // (e % 2) of this warpgroup's 32, row (e < 2 ? r_lo : r_hi).
      const int pos0 = j * kBlockSize + half * 32 + 2 * (lane & 3);
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < 4; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int pos = pos0 + n * 8 + (e & 1);
          const int lim = (e < 2) ? lim_lo : lim_hi;
          const float v = (valid && pos < lim) ? s[4 * n + e] * scale_log2 : -INFINITY;
          s[4 * n + e] = v;
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
      named_barrier_sync(1 + rg, 64);  // warp rg of both warpgroups (the same 16 rows)
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

      // ---- P = exp2(S - m), row sums, P to shared memory (BF16, K-major for the next wgmma)
      float rs[2] = {0.f, 0.f};
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        const float p0 = exp2f(s[4 * n + 0] - mx[0]);
        const float p1 = exp2f(s[4 * n + 1] - mx[0]);
        const float p2 = exp2f(s[4 * n + 2] - mx[1]);
        const float p3 = exp2f(s[4 * n + 3] - mx[1]);
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
        acc[4 * n + 0] *= alpha[0];
        acc[4 * n + 1] *= alpha[0];
        acc[4 * n + 2] *= alpha[1];
        acc[4 * n + 3] *= alpha[1];
      }
      fence_proxy_async_shared();  // this thread's P stores -> visible to wgmma
      __syncthreads();             // P of both warpgroups written

      // ---- O[64 rows, 256 columns] += P[64, 64 tokens] V[64 tokens, 256 columns]: V is read
      // N-major straight from the KV tile (column blocks 4 half .. 4 half + 4, 16 tokens a step).
      warpgroup_fence_operand(acc);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kBlockSize / 16; ++ks) {
        const uint64_t desc_p = make_smem_desc_k_sw128(p_base + ks * 32);
        const uint64_t desc_v =
            make_smem_desc_mn_sw128(kv + half * 4 * kColBlockBytes + ks * 16 * 128, kColBlockBytes);
        wgmma_m64nNk16_bf16<256, true>(acc, desc_p, desc_v, true);
      }
      wgmma_commit_group();
      wgmma_wait_group<0>();
      warpgroup_fence_operand(acc);
    }

    // ---- epilogue: total row sums over both warpgroups, normalise, store
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
              pack_bf16x2(acc[4 * n + 2 * h] * inv[h], acc[4 * n + 2 * h + 1] * inv[h]);
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
              make_float2(acc[4 * n + 2 * h] * inv[h], acc[4 * n + 2 * h + 1] * inv[h]);
        }
        if (half == 0 && (lane & 3) == 0) lse_accum[split_row0 + row] = row_lse[h];
      }
    }
  }
}

// grid (row_tiles, num_parts), kThreads threads, kSmemBf16 dynamic shared memory.
// cache: [num_blocks, 64, 576] BF16.
extern "C" __global__ void __launch_bounds__(kThreads, 1)
    mla_decode_bf16(const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ cache,
                    const int* __restrict__ block_table, const int* __restrict__ sched,
                    const int* __restrict__ split_offsets, const int* __restrict__ lens,
                    __nv_bfloat16* __restrict__ o_lat, float* __restrict__ lse,
                    float* __restrict__ o_accum, float* __restrict__ lse_accum, int* status,
                    int s_q, int heads, int max_blocks, int num_blocks, float scale_log2) {
  decode_body<false>(q, cache, block_table, sched, split_offsets, lens, o_lat, lse, o_accum,
                     lse_accum, status, s_q, heads, max_blocks, num_blocks, scale_log2);
}

// grid (row_tiles, num_parts), kThreads threads, kSmemFp8 dynamic shared memory.
// cache: [num_blocks, 64, 656] bytes (reference/fp8_cache.rs layout), 16-byte aligned.
extern "C" __global__ void __launch_bounds__(kThreads, 1)
    mla_decode_fp8(const __nv_bfloat16* __restrict__ q, const uint8_t* __restrict__ cache,
                   const int* __restrict__ block_table, const int* __restrict__ sched,
                   const int* __restrict__ split_offsets, const int* __restrict__ lens,
                   __nv_bfloat16* __restrict__ o_lat, float* __restrict__ lse,
                   float* __restrict__ o_accum, float* __restrict__ lse_accum, int* status,
                   int s_q, int heads, int max_blocks, int num_blocks, float scale_log2) {
  decode_body<true>(q, cache, block_table, sched, split_offsets, lens, o_lat, lse, o_accum,
                    lse_accum, status, s_q, heads, max_blocks, num_blocks, scale_log2);
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
