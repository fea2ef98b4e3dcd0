// 16-byte vector access to bf16 rows: 8 values per load/store when the row length and the base
// pointers allow it (the wrappers check alignment and pick the scalar path otherwise).
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

namespace dsv3 {

struct alignas(16) Bf16x8 {
  __nv_bfloat162 v[4];
};

__device__ __forceinline__ void load_bf16x8(const __nv_bfloat16* p, float (&out)[8]) {
  Bf16x8 pack = *reinterpret_cast<const Bf16x8*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = __bfloat1622float2(pack.v[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ void store_bf16x8(__nv_bfloat16* p, const float (&in)[8]) {
  Bf16x8 pack;
#pragma unroll
  for (int i = 0; i < 4; ++i) pack.v[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
  *reinterpret_cast<Bf16x8*>(p) = pack;
}

}  // namespace dsv3
