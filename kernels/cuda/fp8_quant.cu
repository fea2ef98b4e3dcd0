// FP8 activation quantization per token per 128 channels (spec §4), optionally fused with
// SiLU-and-mul. Scale layouts are defined in kernels::reference::fp8_quant (TokenMajor:
// scales[t * blocks + b]; BlockMajor: scales[b * scale_stride + t], padding rows written as 0).
//
// One warp per (token, 128-channel block): each lane owns 4 consecutive channels, the block's
// amax is a warp max, then each lane divides by the scale (IEEE division, matching the host
// reference bit for bit) and converts with saturation. Grid: (ceil(blocks / 8), scale_rows),
// 256 threads; scale_rows = tokens (TokenMajor) or scale_stride (BlockMajor, to zero the padding).

#include "dsv3/common.cuh"
#include "dsv3/fp8.cuh"
#include "dsv3/reduce.cuh"

using namespace dsv3;

constexpr int kBlock = 128;
constexpr int kWarpsPerCta = 8;

__device__ __forceinline__ float silu(float z) { return z / (1.0f + expf(-z)); }

template <bool kSiluMul>
__device__ void quantize_block(const __nv_bfloat16* x, uint8_t* q, float* scales, int tokens,
                               int channels, int ue8m0, int block_major, int scale_stride) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int b = blockIdx.x * kWarpsPerCta + warp;
  const int t = blockIdx.y;
  const int blocks = ceil_div(channels, kBlock);
  if (b >= blocks) return;
  float* scale_out = block_major ? scales + static_cast<long>(b) * scale_stride + t
                                 : scales + static_cast<long>(t) * blocks + b;
  if (t >= tokens) {  // padding row of the block-major table
    if (lane == 0) *scale_out = 0.0f;
    return;
  }
  // Row stride of the input: [tokens, channels], or [tokens, 2 * channels] for gate|up.
  const long in_stride = kSiluMul ? 2L * channels : channels;
  const __nv_bfloat16* row = x + t * in_stride;
  float v[4];
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int c = b * kBlock + lane * 4 + i;
    float value = 0.0f;
    if (c < channels) {
      value = bf16_to_f32(row[c]);
      if (kSiluMul) value = silu(value) * bf16_to_f32(row[channels + c]);
    }
    v[i] = value;
    amax = fmaxf(amax, fabsf(value));
  }
  amax = warp_max(amax);
  const float scale = fp8_block_scale(amax, ue8m0 != 0);
  uint8_t* q_row = q + static_cast<long>(t) * channels;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int c = b * kBlock + lane * 4 + i;
    if (c < channels) q_row[c] = f32_to_e4m3(__fdiv_rn(v[i], scale));
  }
  if (lane == 0) *scale_out = scale;
}

extern "C" __global__ void quantize_fp8_bf16(const __nv_bfloat16* x, uint8_t* q, float* scales,
                                             int tokens, int channels, int ue8m0, int block_major,
                                             int scale_stride) {
  quantize_block<false>(x, q, scales, tokens, channels, ue8m0, block_major, scale_stride);
}

// x is [tokens, 2 * inter] (gate | up); q is [tokens, inter].
extern "C" __global__ void silu_and_mul_quantize_fp8_bf16(const __nv_bfloat16* x, uint8_t* q,
                                                          float* scales, int tokens, int inter,
                                                          int ue8m0, int block_major,
                                                          int scale_stride) {
  quantize_block<true>(x, q, scales, tokens, inter, ue8m0, block_major, scale_stride);
}
