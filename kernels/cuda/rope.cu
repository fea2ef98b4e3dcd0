// YaRN RoPE on interleaved pairs (spec §3.2), in place on strided BF16 activations.
// cos/sin come from a table [max_positions, half, 2] built on the host in f64 (see
// kernels::reference::rope): an f32 angle p * f_i is too coarse at long positions.
// Grid: one block per token; threads stride over (head, pair).

#include "dsv3/common.cuh"

using namespace dsv3;

extern "C" __global__ void rope_bf16(__nv_bfloat16* x, const int* positions, const float2* cos_sin,
                                     int heads, long long token_stride, long long head_stride,
                                     int offset, int half, int max_positions, int* status) {
  const int t = blockIdx.x;
  const int p = positions[t];
  if (p < 0 || p >= max_positions) {
    if (threadIdx.x == 0) record_status(status, kStatusPositionOutOfRange);
    return;  // leave the token untouched; the caller reads the status word
  }
  const float2* cs_row = cos_sin + static_cast<long long>(p) * half;
  __nv_bfloat16* base = x + t * token_stride + offset;
  for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
    const int h = idx / half, i = idx % half;
    __nv_bfloat162* pair = reinterpret_cast<__nv_bfloat162*>(base + h * head_stride + 2 * i);
    const float2 v = __bfloat1622float2(*pair);
    const float2 cs = cs_row[i];
    *pair = __floats2bfloat162_rn(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
  }
}
