// e4m3 (float8_e4m3fn) conversions and the ue8m0 scale rounding of spec §4.
#pragma once

#include <cuda_fp8.h>
#include <stdint.h>

namespace dsv3 {

constexpr float kE4m3Max = 448.0f;

// f32 -> e4m3 with round-to-nearest-even and saturation to +-448 (NaN stays NaN). On sm_90 this is
// the hardware cvt.rn.satfinite.e4m3x2.f32; the Rust reference `kernels::dtype::e4m3_from_f32`
// must agree on every input, which `harness verify` checks.
__device__ __forceinline__ uint8_t f32_to_e4m3(float v) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float e4m3_to_f32(uint8_t v) {
  __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(v), __NV_E4M3);
  return __half2float(__half(h));
}

// Quantization scale for one 128-channel block: max(amax, 1e-4) / 448, optionally rounded up to
// a power of two ("ue8m0", as the DeepGEMM scale format wants). Rounding up keeps x / scale <= 448.
__device__ __forceinline__ float fp8_block_scale(float amax, bool ue8m0) {
  float scale = fmaxf(amax, 1e-4f) / kE4m3Max;
  if (ue8m0) {
    uint32_t bits = __float_as_uint(scale);
    uint32_t mantissa = bits & 0x7fffffu;
    bits &= 0xff800000u;
    if (mantissa != 0) bits += 0x800000u;  // next power of two
    scale = __uint_as_float(bits);
  }
  return scale;
}

}  // namespace dsv3
