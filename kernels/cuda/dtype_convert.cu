// Element-wise conversions used to check the host e4m3 codec against the hardware's
// (cvt.rn.satfinite.e4m3x2.f32 and the e4m3 -> f16 -> f32 decode).

#include "dsv3/fp8.cuh"

using namespace dsv3;

extern "C" __global__ void f32_to_e4m3_kernel(const float* x, uint8_t* q, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    q[i] = f32_to_e4m3(x[i]);
  }
}

extern "C" __global__ void e4m3_to_f32_kernel(const uint8_t* q, float* x, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    x[i] = e4m3_to_f32(q[i]);
  }
}
