// RMSNorm with optional fused residual add (spec §3), BF16 in/out, f32 arithmetic.
// One block per row. Pass 1 forms s = x (+ residual, rounded to BF16 and stored back as the new
// residual) and sums s^2; pass 2 re-reads s (the thread's own writes, cached in L1) and writes
// s * rsqrt(mean + eps) * w. `vec8` selects 16-byte accesses (hidden % 8 == 0, aligned pointers).

#include "dsv3/common.cuh"
#include "dsv3/reduce.cuh"
#include "dsv3/vec.cuh"

using namespace dsv3;

template <bool kVec8>
__device__ void rms_norm_row(const __nv_bfloat16* x, const __nv_bfloat16* residual_in,
                             __nv_bfloat16* residual_out, const __nv_bfloat16* weight,
                             __nv_bfloat16* out, int hidden, float eps) {
  __shared__ float scratch[32];
  const long row = blockIdx.x;
  x += row * hidden;
  out += row * hidden;
  const bool fused = residual_in != nullptr;
  if (fused) {
    residual_in += row * hidden;
    residual_out += row * hidden;
  }
  const __nv_bfloat16* s_src = fused ? residual_out : x;

  float sum_sq = 0.0f;
  if constexpr (kVec8) {
    for (int c = threadIdx.x * 8; c < hidden; c += blockDim.x * 8) {
      float v[8];
      load_bf16x8(x + c, v);
      if (fused) {
        float r[8];
        load_bf16x8(residual_in + c, r);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = bf16_to_f32(f32_to_bf16(v[i] + r[i]));
        store_bf16x8(residual_out + c, v);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) sum_sq += v[i] * v[i];
    }
  } else {
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
      float v = bf16_to_f32(x[c]);
      if (fused) {
        __nv_bfloat16 s = f32_to_bf16(v + bf16_to_f32(residual_in[c]));
        residual_out[c] = s;
        v = bf16_to_f32(s);
      }
      sum_sq += v * v;
    }
  }
  const float total = block_sum(sum_sq, scratch);
  const float inv_rms = 1.0f / sqrtf(total / static_cast<float>(hidden) + eps);

  if constexpr (kVec8) {
    for (int c = threadIdx.x * 8; c < hidden; c += blockDim.x * 8) {
      float v[8], w[8];
      load_bf16x8(s_src + c, v);
      load_bf16x8(weight + c, w);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = v[i] * inv_rms * w[i];
      store_bf16x8(out + c, v);
    }
  } else {
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
      out[c] = f32_to_bf16(bf16_to_f32(s_src[c]) * inv_rms * bf16_to_f32(weight[c]));
    }
  }
}

// residual_in / residual_out are both null (plain RMSNorm) or both set (fused add; they may alias).
extern "C" __global__ void rms_norm_bf16(const __nv_bfloat16* x, const __nv_bfloat16* residual_in,
                                         __nv_bfloat16* residual_out, const __nv_bfloat16* weight,
                                         __nv_bfloat16* out, int hidden, float eps, int vec8) {
  if (vec8) {
    rms_norm_row<true>(x, residual_in, residual_out, weight, out, hidden, eps);
  } else {
    rms_norm_row<false>(x, residual_in, residual_out, weight, out, hidden, eps);
  }
}
