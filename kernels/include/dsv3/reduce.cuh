// Warp and block reductions (sum, max, argmax). Block helpers need blockDim.x to be a multiple of
// 32 and at most 1024, and every thread of the block must call them.
#pragma once

#include <math.h>

namespace dsv3 {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Larger value wins; on equal values the lower index wins (the reference's tie rule).
__device__ __forceinline__ void argmax_merge(float& v, int& i, float ov, int oi) {
  if (ov > v || (ov == v && oi < i)) {
    v = ov;
    i = oi;
  }
}

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, v, offset);
    int oi = __shfl_xor_sync(0xffffffffu, i, offset);
    argmax_merge(v, i, ov, oi);
  }
}

// Result is returned to every thread. `scratch` needs 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// Result in every thread. `scratch_v` / `scratch_i` need 32 entries each.
__device__ __forceinline__ void block_argmax(float& v, int& i, float* scratch_v, int* scratch_i) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  warp_argmax(v, i);
  __syncthreads();
  if (lane == 0) {
    scratch_v[warp] = v;
    scratch_i[warp] = i;
  }
  __syncthreads();
  if (lane < warps) {
    v = scratch_v[lane];
    i = scratch_i[lane];
  } else {
    v = -INFINITY;  // loses to any real entry, -inf included (ties go to the lower index)
    i = 0x7fffffff;
  }
  warp_argmax(v, i);
}

}  // namespace dsv3
