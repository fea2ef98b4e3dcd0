// SiLU-and-mul: out[r, c] = silu(x[r, c]) * x[r, inter + c], silu(z) = z / (1 + e^-z), f32 math.
// Grid (column chunks, rows); 8 columns per thread with 16-byte accesses when inter % 8 == 0.

#include "dsv3/common.cuh"
#include "dsv3/vec.cuh"

using namespace dsv3;

__device__ __forceinline__ float silu(float z) { return z / (1.0f + expf(-z)); }

extern "C" __global__ void silu_and_mul_bf16(const __nv_bfloat16* x, __nv_bfloat16* out, int inter,
                                             int vec8) {
  const long row = blockIdx.y;
  const __nv_bfloat16* gate = x + row * 2 * inter;
  const __nv_bfloat16* up = gate + inter;
  out += row * inter;
  if (vec8) {
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) * 8;
    if (c >= inter) return;
    float g[8], u[8];
    load_bf16x8(gate + c, g);
    load_bf16x8(up + c, u);
#pragma unroll
    for (int i = 0; i < 8; ++i) g[i] = silu(g[i]) * u[i];
    store_bf16x8(out + c, g);
  } else {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= inter) return;
    out[c] = f32_to_bf16(silu(bf16_to_f32(gate[c])) * bf16_to_f32(up[c]));
  }
}
