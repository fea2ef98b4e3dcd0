// The two small kernels of the naive cuBLAS MLA decode peer (mla-attention/src/peer.rs): what an
// implementation without paged attention does around two strided-batched cuBLAS GEMMs.
//
// 1. mla_naive_gather: copies each sequence's paged KV blocks into a contiguous buffer
//    kv [batch, l_max = max_blocks * 64, 576] BF16 through the block table. Slots at or past the
//    sequence's length are zero-filled: the P.V GEMM multiplies them by P = 0, and 0 * garbage
//    could be NaN. Grid (max_blocks, batch), 256 threads, one 64-token block per CTA.
// 2. (cuBLAS) scores [batch, S_q * H, l_max] f32 = softmax_scale * Q . K^T.
// 3. mla_naive_softmax: per query row, the causal / length mask, softmax in f32, P written in BF16
//    (already divided by the row sum, so P.V is o_lat directly), lse = max + log(sum) (natural
//    log). Grid (S_q * H, batch), 256 threads.
// 4. (cuBLAS) o_lat [batch, S_q * H, 512] BF16 = P . V, V = the first 512 columns of kv (ld 576).
//
// Bad inputs (the same rules as mla_decode.cu): a cache_seqlens value outside
// [S_q, max_blocks * 64] records kStatusMlaOutOfRange and is clamped into [0, max_blocks * 64];
// a block id outside [0, num_blocks) records it too and its slots are zero-filled (nothing is
// read from it), so every output stays finite.

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "dsv3/common.cuh"

using namespace dsv3;

namespace mla_naive {

constexpr int kBlockSize = 64;                 // tokens per cache block
constexpr int kKvDim = 576;                    // [c_kv (512) ; k_pe (64)]
constexpr int kChunksPerRow = kKvDim * 2 / 16;  // 16-byte chunks per entry: 72
constexpr int kChunksPerBlock = kBlockSize * kChunksPerRow;  // 4608
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ int clamp_len(int len, int l_max) {
  return min(max(len, 0), l_max);
}

// (max, sum) of exp(x - max) for two parts of a row merged; an empty part has max -inf, sum 0.
__device__ __forceinline__ void merge(float& m, float& l, float m2, float l2) {
  const float m_new = fmaxf(m, m2);
  if (m_new == -INFINITY) return;  // both empty (avoids -inf - -inf = NaN)
  l = l * expf(m - m_new) + l2 * expf(m2 - m_new);
  m = m_new;
}

}  // namespace mla_naive

using namespace mla_naive;

extern "C" __global__ void __launch_bounds__(kThreads)
    mla_naive_gather(const __nv_bfloat16* __restrict__ cache,  // [num_blocks, 64, 576]
                     const int* __restrict__ block_table,      // [batch, max_blocks]
                     const int* __restrict__ cache_seqlens,    // [batch]
                     __nv_bfloat16* __restrict__ kv,           // [batch, max_blocks * 64, 576]
                     int s_q, int max_blocks, int num_blocks, int* status) {
  const int j = blockIdx.x;  // block column of the table = 64-token slice of the sequence
  const int b = blockIdx.y;
  const int l_max = max_blocks * kBlockSize;
  const int len_raw = cache_seqlens[b];
  if (j == 0 && threadIdx.x == 0 && (len_raw < s_q || len_raw > l_max)) {
    record_status(status, kStatusMlaOutOfRange);
  }
  const int len = clamp_len(len_raw, l_max);
  int valid = min(max(len - j * kBlockSize, 0), kBlockSize);  // tokens of this slice in use
  int block = -1;
  if (valid > 0) {
    block = block_table[(size_t)b * max_blocks + j];
    if (block < 0 || block >= num_blocks) {
      if (threadIdx.x == 0) record_status(status, kStatusMlaOutOfRange);
      valid = 0;
    }
  }
  const uint4* src =
      reinterpret_cast<const uint4*>(cache + (size_t)max(block, 0) * kBlockSize * kKvDim);
  uint4* dst = reinterpret_cast<uint4*>(kv + ((size_t)b * l_max + (size_t)j * kBlockSize) * kKvDim);
  const int valid_chunks = valid * kChunksPerRow;
  for (int c = threadIdx.x; c < kChunksPerBlock; c += kThreads) {
    dst[c] = c < valid_chunks ? src[c] : make_uint4(0, 0, 0, 0);
  }
}

extern "C" __global__ void __launch_bounds__(kThreads)
    mla_naive_softmax(const float* __restrict__ scores,         // [batch, S_q * H, l_max], scaled
                      const int* __restrict__ cache_seqlens,   // [batch]
                      __nv_bfloat16* __restrict__ probs,        // [batch, S_q * H, l_max]
                      float* __restrict__ lse,                  // [batch, S_q * H]
                      int s_q, int heads, int l_max) {
  const int r = blockIdx.x;  // row = i * H + h within the sequence
  const int b = blockIdx.y;
  const int rows = s_q * heads;
  const int i = r / heads;  // query token: sees positions < len - S_q + i + 1
  const int len = clamp_len(cache_seqlens[b], l_max);
  const int visible = min(max(len - s_q + i + 1, 0), l_max);
  const size_t row = (size_t)b * rows + r;
  const float* s = scores + row * l_max;
  __nv_bfloat16* p = probs + row * l_max;

  // Per-thread online max / sum over its strided slice of the visible scores (one exp each).
  float m = -INFINITY, l = 0.0f;
  for (int t = threadIdx.x; t < visible; t += kThreads) {
    const float x = s[t];
    if (x > m) {
      l = l * expf(m - x) + 1.0f;  // m = -inf at first: exp(-inf) = 0
      m = x;
    } else {
      l += expf(x - m);
    }
  }
  for (int off = 16; off > 0; off >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const float l2 = __shfl_xor_sync(0xffffffffu, l, off);
    merge(m, l, m2, l2);
  }
  __shared__ float warp_m[kWarps], warp_l[kWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    warp_m[warp] = m;
    warp_l[warp] = l;
  }
  __syncthreads();
  m = -INFINITY;
  l = 0.0f;
  for (int w = 0; w < kWarps; ++w) merge(m, l, warp_m[w], warp_l[w]);

  // A row with no visible token (only for clamped bad lengths): P = 0, so o = 0; lse = -inf.
  const float inv_sum = l > 0.0f ? 1.0f / l : 0.0f;
  for (int t = threadIdx.x; t < l_max; t += kThreads) {
    const float w = t < visible ? expf(s[t] - m) * inv_sum : 0.0f;
    p[t] = __float2bfloat16_rn(w);
  }
  if (threadIdx.x == 0) lse[row] = l > 0.0f ? m + logf(l) : -INFINITY;
}
