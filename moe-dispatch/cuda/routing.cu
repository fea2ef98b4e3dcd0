// MoE routing (spec §3.3): the fused top-k router, the BF16 gate GEMM and per-expert counts.
//
// The rule is `moe_dispatch::reference::routing` (read its module docs): this file reproduces its
// arithmetic operation for operation, so that ids, their order and weights are bit-identical to
// the reference for the same logits. The means:
//   - exp_repro / sigmoid use only correctly rounded IEEE operations, spelled with intrinsics nvcc
//     never contracts into FMAs or approximates (__fmul_rn, __fadd_rn, __fsub_rn, __fdiv_rn,
//     __fmaf_rn, rintf); constants are given by bit pattern. The build keeps denormals.
//   - comparisons are on `ordered` values (NaN -> -inf, -0 -> +0) mapped to order-preserving u32
//     keys; warp-wide argmax is an exact u32 max (value) then u32 min (index), so ties go to the
//     lower index exactly as in the reference.
//   - the softmax denominator is the reference's `lane_tree_sum`: lane l sums experts l, l+32, ...
//     in order, then an xor butterfly (identical result in every lane).
//   - the weight sum runs in output order in every lane, then (s / (sum + 1e-20)) * scale.
//
// route_topk: one warp per token, lane l holds experts l + 32 j (j < 16), so E <= 512.
// gate_gemm_*: z[T, E] = x[T, H] . W[E, H]^T on mma.sync m16n8k16 (BF16 in, f32 accumulate) with a
//   4-stage cp.async pipeline; a 64x64 tile for prefill and a 16x16 tile whose K range is split
//   over the block's 4 warps (reduced in a fixed order) for decode. Deterministic.
// expert_counts_i32: shared-memory histogram, integer atomics (order-independent result).

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "dsv3/common.cuh"
#include "dsv3/hopper.cuh"  // cp.async
#include "dsv3/mma.cuh"

using namespace dsv3;

namespace {

constexpr unsigned kFull = 0xffffffffu;

// ------------------------------------------------------------------------------------------------
// Routing
// ------------------------------------------------------------------------------------------------

constexpr int kMaxExperts = 512;
constexpr int kSlots = kMaxExperts / 32;  // experts per lane
constexpr int kMaxGroups = 16;
constexpr int kRouteWarps = 4;

// Scoring / method codes (moe_dispatch::gpu::routing passes these).
constexpr int kSoftmax = 1;
constexpr int kNoauxTc = 0;
constexpr int kGreedy = 1;

__device__ __forceinline__ float ordered(float v) {
  if (isnan(v)) return -INFINITY;
  return v == 0.0f ? 0.0f : v;
}

// Order-preserving map of an `ordered` float (no NaN, no -0) to u32; every value maps above 0,
// so 0 means "no candidate".
__device__ __forceinline__ uint32_t key_of(float v) {
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float value_of(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

__device__ __forceinline__ float pow2(int n) { return __int_as_float((n + 127) << 23); }

// reference::routing::exp_repro, operation for operation.
__device__ __forceinline__ float exp_repro(float x) {
  if (isnan(x)) return x;
  x = fminf(fmaxf(x, -104.0f), 89.0f);
  const float k = rintf(__fmul_rn(x, __int_as_float(0x3fb8aa3b)));
  float r = __fmaf_rn(k, -__int_as_float(0x3f317200), x);
  r = __fmaf_rn(k, -__int_as_float(0x35bfbe8e), r);
  float p = __int_as_float(0x39500d01);
  p = __fmaf_rn(p, r, __int_as_float(0x3ab60b61));
  p = __fmaf_rn(p, r, __int_as_float(0x3c088889));
  p = __fmaf_rn(p, r, __int_as_float(0x3d2aaaab));
  p = __fmaf_rn(p, r, __int_as_float(0x3e2aaaab));
  p = __fmaf_rn(p, r, __int_as_float(0x3f000000));
  p = __fmaf_rn(p, r, 1.0f);
  p = __fmaf_rn(p, r, 1.0f);
  const int ki = __float2int_rn(k);  // k is an integer in [-150, 129]: exact
  const int k1 = ki / 2;
  const int k2 = ki - k1;
  return __fmul_rn(__fmul_rn(p, pow2(k1)), pow2(k2));
}

// reference::routing::sigmoid for an already `ordered` z.
__device__ __forceinline__ float sigmoid_ordered(float z) {
  return __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_repro(-z)));
}

}  // namespace

// z [tokens, E] f32; bias [E] f32 (noaux_tc only, else null); ids / weights [tokens, K].
// Launch: blocks of kRouteWarps warps, one warp per token. The host validated the config
// (RoutingConfig::validate), so E <= 512, K <= 16, n_group <= 16 and K experts are available.
extern "C" __global__ void __launch_bounds__(kRouteWarps * 32)
    route_topk(const float* __restrict__ z, const float* __restrict__ bias, int* __restrict__ ids,
               float* __restrict__ weights, int tokens, int num_experts, int top_k, int n_group,
               int topk_group, int scoring, int method, int norm, float scale) {
  const int lane = threadIdx.x & 31;
  const int t = blockIdx.x * kRouteWarps + (threadIdx.x >> 5);
  if (t >= tokens) return;  // warp-uniform: the full-mask collectives below stay valid
  const int E = num_experts;
  const float* row = z + static_cast<long>(t) * E;

  // Step 1-2: scores s.
  float s[kSlots];
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    const int i = lane + 32 * j;
    s[j] = i < E ? ordered(row[i]) : -INFINITY;
  }
  if (scoring == kSoftmax) {
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < kSlots; ++j) m = fmaxf(m, s[j]);
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) m = fmaxf(m, __shfl_xor_sync(kFull, m, d));
    float part = 0.0f;
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (lane + 32 * j < E) {
        const float e = s[j] == m ? 1.0f : exp_repro(__fsub_rn(s[j], m));
        s[j] = e;
        part = __fadd_rn(part, e);
      }
    }
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) part = __fadd_rn(part, __shfl_xor_sync(kFull, part, d));
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (lane + 32 * j < E) s[j] = __fdiv_rn(s[j], part);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (lane + 32 * j < E) s[j] = sigmoid_ordered(s[j]);
    }
  }

  // Step 3: selection scores c as keys (0 = not an expert).
  uint32_t key[kSlots];
  uint32_t eligible = 0;  // bit j: slot j is a candidate
#pragma unroll
  for (int j = 0; j < kSlots; ++j) {
    const int i = lane + 32 * j;
    key[j] = 0;
    if (i < E) {
      const float c = method == kNoauxTc ? ordered(__fadd_rn(s[j], bias[i])) : s[j];
      key[j] = key_of(c);
      eligible |= 1u << j;
    }
  }

  // Step 4: groups.
  if (method != kGreedy && n_group > 1) {
    const int G = E / n_group;
    float my_score = -INFINITY;  // lane g: group g's score
#pragma unroll
    for (int g = 0; g < kMaxGroups; ++g) {
      if (g < n_group) {
        const int lo = g * G, hi = lo + G;
        uint32_t a = 0, b = 0;  // the two largest keys of the group, a >= b (a multiset)
#pragma unroll
        for (int j = 0; j < kSlots; ++j) {
          const int i = lane + 32 * j;
          if (i >= lo && i < hi) {
            const uint32_t v = key[j];
            if (v > a) {
              b = a;
              a = v;
            } else if (v > b) {
              b = v;
            }
          }
        }
#pragma unroll
        for (int d = 16; d > 0; d >>= 1) {
          const uint32_t oa = __shfl_xor_sync(kFull, a, d);
          const uint32_t ob = __shfl_xor_sync(kFull, b, d);
          b = max(min(a, oa), max(b, ob));
          a = max(a, oa);
        }
        // noaux_tc: G >= 2 (validated), so b is a real expert's key.
        const float score =
            method == kNoauxTc ? ordered(__fadd_rn(value_of(a), value_of(b))) : value_of(a);
        if (lane == g) my_score = score;
      }
    }
    // Group g is kept iff fewer than topk_group groups rank before it.
    int rank = 0;
#pragma unroll
    for (int h = 0; h < kMaxGroups; ++h) {
      if (h < n_group) {
        const float o = __shfl_sync(kFull, my_score, h);
        if (o > my_score || (o == my_score && h < lane)) ++rank;
      }
    }
    const uint32_t kept = __ballot_sync(kFull, lane < n_group && rank < topk_group);
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      const int i = lane + 32 * j;
      if (i < E && !((kept >> (i / G)) & 1u)) eligible &= ~(1u << j);
    }
  }

  // Step 5-6: K rounds of warp argmax (larger key, then lower index); lane r keeps choice r.
  int my_id = 0;
  float my_s = 0.0f;
  float sum = 0.0f;
  for (int r = 0; r < top_k; ++r) {
    uint32_t best_key = 0;
    uint32_t best_i = 0xffffffffu;
    float best_s = 0.0f;
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (((eligible >> j) & 1u) && key[j] > best_key) {
        best_key = key[j];
        best_i = static_cast<uint32_t>(lane + 32 * j);
        best_s = s[j];
      }
    }
    const uint32_t kmax = __reduce_max_sync(kFull, best_key);
    const uint32_t win = __reduce_min_sync(kFull, best_key == kmax ? best_i : 0xffffffffu);
    if (win == 0xffffffffu) break;  // no candidate left: impossible for a validated config
    const int wl = static_cast<int>(win & 31u);
    const float ws = __shfl_sync(kFull, best_s, wl);
    if (lane == wl) eligible &= ~(1u << (win >> 5));
    if (lane == r) {
      my_id = static_cast<int>(win);
      my_s = ws;
    }
    sum = __fadd_rn(sum, ws);
  }
  if (lane < top_k) {
    const long o = static_cast<long>(t) * top_k + lane;
    ids[o] = my_id;
    weights[o] = norm ? __fmul_rn(__fdiv_rn(my_s, __fadd_rn(sum, __int_as_float(0x1e3ce508))), scale)
                      : __fmul_rn(my_s, scale);
  }
}

// ------------------------------------------------------------------------------------------------
// Gate GEMM: z[T, E] = x[T, H] . W[E, H]^T, BF16 x BF16 -> f32.
// ------------------------------------------------------------------------------------------------

namespace {

constexpr int kGemmThreads = 128;
constexpr int kStages = 4;
constexpr int kWarpK = 32;  // K columns one warp consumes per stage (two k16 mma steps)

// BM x BN output tile per block; warps arranged WM x WN over the tile and KSPLIT along K (warp
// wk consumes columns [wk * 32, wk * 32 + 32) of each stage; the partial tiles are summed in the
// order wk = 0, 1, 2, ... at the end).
template <int BM, int BN, int WM, int WN, int KSPLIT>
struct GemmTile {
  static constexpr int kKt = KSPLIT * kWarpK;  // K columns per stage
  static constexpr int kLd = kKt + 8;          // smem row stride (bf16): conflict-free fragments
  static constexpr int kMt = BM / WM / 16;     // m16 tiles per warp
  static constexpr int kNt = BN / WN / 8;      // n8 tiles per warp
  static constexpr int kChunksA = BM * kKt / 8 / kGemmThreads;
  static constexpr int kChunksB = BN * kKt / 8 / kGemmThreads;
  static_assert(WM * WN * KSPLIT * 32 == kGemmThreads, "warp layout must use every warp");
  static_assert(kMt >= 1 && kNt >= 1, "warp tile too small");
  static_assert(kChunksA * kGemmThreads * 8 == BM * kKt, "A stage not evenly split");
  static_assert(kChunksB * kGemmThreads * 8 == BN * kKt, "B stage not evenly split");

  struct Smem {
    __nv_bfloat16 a[kStages][BM][kLd];
    __nv_bfloat16 b[kStages][BN][kLd];
    // Partial tiles of warps wk > 0 (a single float when K is not split).
    float red[KSPLIT > 1 ? KSPLIT - 1 : 1][KSPLIT > 1 ? WM * WN : 1][KSPLIT > 1 ? 32 : 1]
             [KSPLIT > 1 ? kMt * kNt * 4 : 1];
  };
};

// Loads rows [row0, row0 + ROWS) x columns [k0, k0 + KT) of a [rows, H] matrix into smem rows of
// stride LD. Out-of-range rows / columns are zero (products with zero leave the sums unchanged).
template <int ROWS, int KT, int LD, int CHUNKS>
__device__ __forceinline__ void load_rows(__nv_bfloat16 (*dst)[LD], const __nv_bfloat16* src,
                                          int row0, int rows, int k0, int H, bool vec) {
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int chunk = threadIdx.x + c * kGemmThreads;
    const int r = chunk / (KT / 8);
    const int col = (chunk % (KT / 8)) * 8;
    const int gr = row0 + r, gk = k0 + col;
    if (vec) {
      // H % 8 == 0 and 16-byte aligned rows: a chunk is wholly inside or outside.
      const bool in = gr < rows && gk < H;
      const __nv_bfloat16* p = in ? src + static_cast<long>(gr) * H + gk : src;
      dsv3::cp_async_16(&dst[r][col], p, in ? 16u : 0u);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const bool in = gr < rows && gk + e < H;
        dst[r][col + e] = in ? src[static_cast<long>(gr) * H + gk + e] : __float2bfloat16_rn(0.0f);
      }
    }
  }
}

template <int BM, int BN, int WM, int WN, int KSPLIT>
__device__ __forceinline__ void gate_gemm_body(const __nv_bfloat16* __restrict__ x,
                                               const __nv_bfloat16* __restrict__ w,
                                               float* __restrict__ z, int T, int E, int H,
                                               int vec) {
  using Tile = GemmTile<BM, BN, WM, WN, KSPLIT>;
  constexpr int KT = Tile::kKt, LD = Tile::kLd, MT = Tile::kMt, NT = Tile::kNt;
  __shared__ __align__(16) typename Tile::Smem sm;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wk = warp / (WM * WN), wrest = warp % (WM * WN);
  const int wm = wrest / WN, wn = wrest % WN;
  const int g = lane >> 2, tig = lane & 3;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const bool v = vec != 0;

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

  const int ktiles = (H + KT - 1) / KT;
  auto load_stage = [&](int stage, int kt) {
    load_rows<BM, KT, LD, Tile::kChunksA>(sm.a[stage], x, m0, T, kt * KT, H, v);
    load_rows<BN, KT, LD, Tile::kChunksB>(sm.b[stage], w, n0, E, kt * KT, H, v);
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    dsv3::cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    dsv3::cp_async_wait<kStages - 2>();
    __syncthreads();  // stage kt visible to all; everyone is done with stage kt - 1
    const int next = kt + kStages - 1;
    if (next < ktiles) load_stage(next % kStages, next);
    dsv3::cp_async_commit();

    const int st = kt % kStages;
#pragma unroll
    for (int kk = 0; kk < kWarpK; kk += 16) {
      const int kc = wk * kWarpK + kk + 2 * tig;
      uint32_t af[MT][4], bfr[NT][2];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const int r = wm * (BM / WM) + i * 16 + g;
        af[i][0] = *reinterpret_cast<const uint32_t*>(&sm.a[st][r][kc]);
        af[i][1] = *reinterpret_cast<const uint32_t*>(&sm.a[st][r + 8][kc]);
        af[i][2] = *reinterpret_cast<const uint32_t*>(&sm.a[st][r][kc + 8]);
        af[i][3] = *reinterpret_cast<const uint32_t*>(&sm.a[st][r + 8][kc + 8]);
      }
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int n = wn * (BN / WN) + j * 8 + g;
        bfr[j][0] = *reinterpret_cast<const uint32_t*>(&sm.b[st][n][kc]);
        bfr[j][1] = *reinterpret_cast<const uint32_t*>(&sm.b[st][n][kc + 8]);
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j) dsv3::mma_m16n8k16_bf16(acc[i][j], af[i], bfr[j]);
    }
  }
  dsv3::cp_async_wait<0>();

  if constexpr (KSPLIT > 1) {
    if (wk > 0) {
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int q = 0; q < 4; ++q) sm.red[wk - 1][wrest][lane][(i * NT + j) * 4 + q] = acc[i][j][q];
    }
    __syncthreads();
    if (wk > 0) return;
#pragma unroll
    for (int p = 0; p < KSPLIT - 1; ++p)
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int q = 0; q < 4; ++q)
            acc[i][j][q] = __fadd_rn(acc[i][j][q], sm.red[p][wrest][lane][(i * NT + j) * 4 + q]);
  }

#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const int col = n0 + wn * (BN / WN) + j * 8 + 2 * tig;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int rr = m0 + wm * (BM / WM) + i * 16 + g + 8 * h;
        if (rr >= T) continue;
        float* out = z + static_cast<long>(rr) * E;
        if (col < E) out[col] = acc[i][j][2 * h];
        if (col + 1 < E) out[col + 1] = acc[i][j][2 * h + 1];
      }
    }
  }
}

}  // namespace

// Grid (ceil(E / 64), ceil(T / 64)), 128 threads. vec: H % 8 == 0 and x, w 16-byte aligned.
extern "C" __global__ void __launch_bounds__(kGemmThreads)
    gate_gemm_64x64(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                    float* __restrict__ z, int T, int E, int H, int vec) {
  gate_gemm_body<64, 64, 2, 2, 1>(x, w, z, T, E, H, vec);
}

// Grid (ceil(E / 16), ceil(T / 16)), 128 threads: the decode shape, K split over the 4 warps.
extern "C" __global__ void __launch_bounds__(kGemmThreads)
    gate_gemm_16x16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ w,
                    float* __restrict__ z, int T, int E, int H, int vec) {
  gate_gemm_body<16, 16, 1, 1, 4>(x, w, z, T, E, H, vec);
}

// ------------------------------------------------------------------------------------------------
// Per-expert counts
// ------------------------------------------------------------------------------------------------

// counts [E] must be zero on entry (the wrapper clears it). Dynamic shared memory: E ints.
// An id outside [0, E) is not counted and records kStatusExpertIdOutOfRange.
extern "C" __global__ void __launch_bounds__(256)
    expert_counts_i32(const int* __restrict__ ids, long n, int num_experts, int* __restrict__ counts,
                      int* status) {
  DSV3_DYNAMIC_SMEM(int, hist);
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) hist[e] = 0;
  __syncthreads();
  const long stride = static_cast<long>(gridDim.x) * blockDim.x;
  for (long i = static_cast<long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int id = ids[i];
    if (id >= 0 && id < num_experts) {
      atomicAdd(&hist[id], 1);
    } else {
      record_status(status, kStatusExpertIdOutOfRange);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    if (hist[e] != 0) atomicAdd(&counts[e], hist[e]);
  }
}
