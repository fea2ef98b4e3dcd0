// MoE permute (dispatch) and combine (spec §3.3). The contract is
// moe-dispatch/src/reference/permute.rs; the launch wrappers are moe-dispatch/src/gpu/permute.rs.
//
// Layout building (no host round trip): topk_ids [pairs = T * K] -> slot [pairs], counts [E],
// and for the contiguous layout offsets [E + 1] and m_indices [rows_cap]. A stable counting sort
// in three small kernels, so rows within an expert come in (t, k) order exactly as the reference:
//   1. moe_layout_rank   (one 1024-thread CTA per tile of 1024 pairs): each pair's rank among
//      the tile's pairs of the same expert (warp __match_any_sync + per-warp counts scanned over
//      the 32 warps in shared memory) -> slot (tile-local), and the tile's histogram.
//   2. moe_layout_scan   (one CTA, thread e = expert e): per expert, exclusive scan of the tile
//      histograms over tiles; then a block scan over experts of round_up(count, align) gives the
//      aligned offsets (contiguous) or e * m_max (masked); tile bases become absolute.
//   3. moe_layout_finish (grid over max(pairs, rows_cap)): slot += base of (tile, expert); every
//      m_indices row is written (expert, or -1 for padding and for rows past offsets[E]).
// Bad ids (outside [0, E)) and masked experts over m_max record kStatusDispatchOutOfRange and the
// affected pairs get slot -1 (dispatch and combine skip them; masked counts are clamped to m_max).
//
// Dispatch (moe_dispatch_rows): one CTA per token; the token's row is read once with 16-byte
// vector loads (4 in flight per thread) and stored to each of its K destination rows; FP8 scales
// are moved by the same CTA into the block-major table(s). Padding rows are not touched.
//
// Combine (moe_combine_bf16): one CTA per token, each thread 8 columns at a time: up to 8 source
// rows loaded (16 bytes each) before accumulating; acc = acc + w * y in k order with explicit
// __fmul_rn / __fadd_rn (no FMA contraction), + shared last, round to BF16 -- bit-exact with the
// reference.

#include "dsv3/common.cuh"
#include "dsv3/vec.cuh"

using namespace dsv3;

constexpr int kTile = 1024;        // pairs per moe_layout_rank CTA (its block size)
constexpr int kMaxExperts = 512;   // mirrored by MAX_EXPERTS in gpu/permute.rs
constexpr int kMaxTopK = 256;      // mirrored by MAX_TOP_K in gpu/permute.rs
constexpr int kFinishThreads = 256;
constexpr int kRowUnroll = 4;      // 16-byte loads in flight per thread in dispatch
constexpr int kCombineUnroll = 8;  // source rows loaded before accumulating in combine

extern "C" __global__ void __launch_bounds__(kTile)
    moe_layout_rank(const int* __restrict__ ids, int pairs, int num_experts, int* __restrict__ slot,
                    int* __restrict__ tile_hist, int* status) {
  // cnt[w * E + e]: pairs of expert e in warp w of this tile, then their exclusive scan over w.
  __shared__ uint16_t cnt[32 * kMaxExperts];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  for (int i = tid; i < 32 * num_experts; i += kTile) cnt[i] = 0;
  __syncthreads();

  const long i = static_cast<long>(blockIdx.x) * kTile + tid;
  int e = -1;
  if (i < pairs) {
    e = ids[i];
    if (e < 0 || e >= num_experts) {
      record_status(status, kStatusDispatchOutOfRange);
      e = -1;
    }
  }
  // Every lane takes part; lanes past the end get their own key so they match nobody valid.
  const unsigned peers = __match_any_sync(0xffffffffu, i < pairs ? e : -2);
  const int rank = __popc(peers & ((1u << lane) - 1u));
  if (e >= 0 && rank == 0) cnt[warp * num_experts + e] = static_cast<uint16_t>(__popc(peers));
  __syncthreads();

  for (int x = tid; x < num_experts; x += kTile) {
    int run = 0;
#pragma unroll 8
    for (int w = 0; w < 32; ++w) {
      const int c = cnt[w * num_experts + x];
      cnt[w * num_experts + x] = static_cast<uint16_t>(run);
      run += c;
    }
    tile_hist[static_cast<long>(blockIdx.x) * num_experts + x] = run;
  }
  __syncthreads();
  if (i < pairs) slot[i] = e >= 0 ? cnt[warp * num_experts + e] + rank : -1;
}

// Exclusive scan of `v` over the block (blockDim.x a multiple of 32, <= 1024); `total` is set in
// every thread. `scratch` needs 32 ints.
__device__ __forceinline__ int block_exclusive_scan(int v, int* scratch, int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int inc = v;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int o = __shfl_up_sync(0xffffffffu, inc, d);
    if (lane >= d) inc += o;
  }
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    int w = lane < warps ? scratch[lane] : 0;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int o = __shfl_up_sync(0xffffffffu, w, d);
      if (lane >= d) w += o;
    }
    scratch[lane] = w;  // inclusive scan of warp totals
  }
  __syncthreads();
  total = scratch[warps - 1];
  return inc - v + (warp > 0 ? scratch[warp - 1] : 0);
}

// One CTA of kMaxExperts threads. masked != 0: base of expert e is e * m_max and counts are
// clamped to m_max; else bases are the aligned offsets (written to offsets[0..=E]).
extern "C" __global__ void __launch_bounds__(kMaxExperts)
    moe_layout_scan(int* __restrict__ tile_hist, int num_tiles, int num_experts, int masked,
                    int align, int m_max, int* __restrict__ counts, int* __restrict__ offsets,
                    int* status) {
  __shared__ int scratch[32];
  const int e = threadIdx.x;
  const bool valid = e < num_experts;
  int count = 0;
  if (valid) {
    for (int tile = 0; tile < num_tiles; ++tile) {
      int* h = tile_hist + static_cast<long>(tile) * num_experts + e;
      const int c = *h;
      *h = count;
      count += c;
    }
  }
  int base;
  if (masked) {
    base = e * m_max;
    if (valid && count > m_max) record_status(status, kStatusDispatchOutOfRange);
    if (valid) counts[e] = min(count, m_max);
  } else {
    const int padded = valid ? (count + align - 1) / align * align : 0;
    int total;
    base = block_exclusive_scan(padded, scratch, total);
    if (valid) {
      counts[e] = count;
      offsets[e] = base;
    }
    if (e == 0) offsets[num_experts] = total;
  }
  if (valid) {
    for (int tile = 0; tile < num_tiles; ++tile) {
      tile_hist[static_cast<long>(tile) * num_experts + e] += base;
    }
  }
}

// Grid: ceil(max(pairs, rows_cap) / kFinishThreads) CTAs. m_indices may be null (masked).
extern "C" __global__ void __launch_bounds__(kFinishThreads)
    moe_layout_finish(const int* __restrict__ ids, int pairs, const int* __restrict__ tile_base,
                      int num_experts, int masked, int m_max, int* __restrict__ slot,
                      const int* __restrict__ counts, const int* __restrict__ offsets,
                      int* __restrict__ m_indices, int rows_cap) {
  __shared__ int s_off[kMaxExperts + 1];
  __shared__ int s_cnt[kMaxExperts];
  const long i = static_cast<long>(blockIdx.x) * kFinishThreads + threadIdx.x;
  if (i < pairs) {
    const int local = slot[i];
    if (local >= 0) {
      const int e = ids[i];
      int s = tile_base[(i / kTile) * num_experts + e] + local;
      if (masked && s - e * m_max >= m_max) s = -1;  // over m_max: dropped (status recorded)
      slot[i] = s;
    }
  }
  if (masked || m_indices == nullptr) return;  // uniform over the grid
  for (int x = threadIdx.x; x <= num_experts; x += kFinishThreads) {
    s_off[x] = offsets[x];
    if (x < num_experts) s_cnt[x] = counts[x];
  }
  __syncthreads();
  if (i >= rows_cap) return;
  const int r = static_cast<int>(i);
  // Largest e in [0, E] with offsets[e] <= r (offsets are non-decreasing, offsets[0] = 0).
  int lo = 0, hi = num_experts;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (s_off[mid] <= r) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  m_indices[r] = (lo < num_experts && r < s_off[lo] + s_cnt[lo]) ? lo : -1;
}

// Loads the token's K destination rows into shared memory (-1: skip); out-of-range slots other
// than -1 are recorded. Every thread must call it.
__device__ __forceinline__ void load_slots(const int* slot, long t, int top_k, int rows, int* s_dst,
                                           int* status) {
  for (int k = threadIdx.x; k < top_k; k += blockDim.x) {
    const int s = slot[t * top_k + k];
    const bool ok = s >= 0 && s < rows;
    if (!ok && s != -1) record_status(status, kStatusDispatchOutOfRange);
    s_dst[k] = ok ? s : -1;
  }
  __syncthreads();
}

// Grid: T CTAs. Rows are `row_bytes` bytes (vec16: a multiple of 16 with 16-byte aligned bases).
// With in_scales != null (FP8): the token's `blocks` scales (input: block-major with stride
// in_stride if in_block_major, else token-major) go to out_scales at
//   (d / group_rows) * group_table + b * out_stride + d % group_rows
// for destination row d (contiguous: one group of all rows; masked: group = expert).
extern "C" __global__ void moe_dispatch_rows(
    const uint8_t* __restrict__ x, const int* __restrict__ slot, int top_k, long row_bytes,
    int rows, int vec16, uint8_t* __restrict__ out, const float* __restrict__ in_scales,
    int blocks, int in_block_major, int in_stride, float* __restrict__ out_scales, int group_rows,
    long group_table, int out_stride, int* status) {
  __shared__ int s_dst[kMaxTopK];
  const long t = blockIdx.x;
  load_slots(slot, t, top_k, rows, s_dst, status);

  if (vec16) {
    const uint4* src = reinterpret_cast<const uint4*>(x + t * row_bytes);
    const long n16 = row_bytes / 16;
    for (long c0 = threadIdx.x; c0 < n16; c0 += static_cast<long>(kRowUnroll) * blockDim.x) {
      uint4 v[kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
        const long c = c0 + static_cast<long>(u) * blockDim.x;
        if (c < n16) v[u] = __ldg(src + c);
      }
      for (int k = 0; k < top_k; ++k) {
        const int d = s_dst[k];
        if (d < 0) continue;
        uint4* dst = reinterpret_cast<uint4*>(out + d * row_bytes);
#pragma unroll
        for (int u = 0; u < kRowUnroll; ++u) {
          const long c = c0 + static_cast<long>(u) * blockDim.x;
          if (c < n16) dst[c] = v[u];
        }
      }
    }
  } else {
    const uint8_t* src = x + t * row_bytes;
    for (long c = threadIdx.x; c < row_bytes; c += blockDim.x) {
      const uint8_t v = src[c];
      for (int k = 0; k < top_k; ++k) {
        const int d = s_dst[k];
        if (d >= 0) out[d * row_bytes + c] = v;
      }
    }
  }

  if (in_scales == nullptr) return;
  for (int idx = threadIdx.x; idx < top_k * blocks; idx += blockDim.x) {
    const int k = idx / blocks, b = idx - k * blocks;
    const int d = s_dst[k];
    if (d < 0) continue;
    const float s = in_block_major ? in_scales[static_cast<long>(b) * in_stride + t]
                                   : in_scales[t * blocks + b];
    const int g = d / group_rows, r = d - g * group_rows;
    out_scales[g * group_table + static_cast<long>(b) * out_stride + r] = s;
  }
}

// 16 bytes of bf16 through the read-only path.
__device__ __forceinline__ Bf16x8 ldg_bf16x8(const __nv_bfloat16* p) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  Bf16x8 out;
  memcpy(static_cast<void*>(&out), &raw, sizeof(out));
  return out;
}

// Grid: T CTAs. y is [rows, hidden]; out[t] = bf16(sum_k w[t,k] * y[slot[t,k]] + shared[t]) with
// the reference's operation order. shared may be null. vec8: hidden % 8 == 0 and 16-byte bases.
extern "C" __global__ void moe_combine_bf16(const __nv_bfloat16* __restrict__ y,
                                            const int* __restrict__ slot,
                                            const float* __restrict__ topk_weights,
                                            const __nv_bfloat16* __restrict__ shared,
                                            __nv_bfloat16* __restrict__ out, int top_k, int hidden,
                                            int rows, int vec8, int* status) {
  __shared__ int s_src[kMaxTopK];
  __shared__ float s_w[kMaxTopK];
  const long t = blockIdx.x;
  for (int k = threadIdx.x; k < top_k; k += blockDim.x) s_w[k] = topk_weights[t * top_k + k];
  load_slots(slot, t, top_k, rows, s_src, status);  // syncs

  const long row = t * hidden;
  if (vec8) {
    for (int c = threadIdx.x * 8; c < hidden; c += blockDim.x * 8) {
      float acc[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
      for (int k0 = 0; k0 < top_k; k0 += kCombineUnroll) {
        Bf16x8 v[kCombineUnroll];
#pragma unroll
        for (int u = 0; u < kCombineUnroll; ++u) {
          const int k = k0 + u;
          const int s = k < top_k ? s_src[k] : -1;
          v[u] = s >= 0 ? ldg_bf16x8(y + static_cast<long>(s) * hidden + c) : Bf16x8{};
        }
#pragma unroll
        for (int u = 0; u < kCombineUnroll; ++u) {
          const int k = k0 + u;
          if (k >= top_k || s_src[k] < 0) continue;
          const float w = s_w[k];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float2 f = __bfloat1622float2(v[u].v[i]);
            acc[2 * i] = __fadd_rn(acc[2 * i], __fmul_rn(w, f.x));
            acc[2 * i + 1] = __fadd_rn(acc[2 * i + 1], __fmul_rn(w, f.y));
          }
        }
      }
      if (shared != nullptr) {
        float sv[8];
        load_bf16x8(shared + row + c, sv);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = __fadd_rn(acc[i], sv[i]);
      }
      store_bf16x8(out + row + c, acc);
    }
  } else {
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
      float acc = 0.0f;
      for (int k = 0; k < top_k; ++k) {
        const int s = s_src[k];
        if (s < 0) continue;
        acc = __fadd_rn(acc, __fmul_rn(s_w[k], bf16_to_f32(y[static_cast<long>(s) * hidden + c])));
      }
      if (shared != nullptr) acc = __fadd_rn(acc, bf16_to_f32(shared[row + c]));
      out[row + c] = f32_to_bf16(acc);
    }
  }
}
