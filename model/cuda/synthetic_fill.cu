// Random fills for the full-width synthetic benchmark (model/src/cuda/synthetic.rs): weights and
// KV cache entries generated on the device from a seed, so ~40 GB of FP8 weights need no host
// memory and no files. Element i of a tensor depends only on (seed, i): a splitmix64 hash of the
// index, turned into uniforms and (Box-Muller) normals. Grid-stride loops over 64-bit lengths.

#include "dsv3/common.cuh"
#include "dsv3/fp8.cuh"

using namespace dsv3;

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in (0, 1]: the top 24 bits plus one, times 2^-24 (never 0, so log() is finite).
__device__ __forceinline__ float unit_open(unsigned long long bits) {
  return (static_cast<float>(bits >> 40) + 1.0f) * 5.9604644775390625e-8f;
}

// One standard normal from the hash of (seed, i) (Box-Muller on two 24-bit uniforms: finite).
__device__ __forceinline__ float normal_at(unsigned long long seed, long long i) {
  const unsigned long long h = splitmix64(seed ^ splitmix64(static_cast<unsigned long long>(i)));
  const float u1 = unit_open(h);
  const float u2 = unit_open(h << 24);
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

// out[i] = e4m3(std * N(0, 1)), saturated to +-448: never the NaN codes 0x7f / 0xff.
extern "C" __global__ void fill_e4m3_normal(uint8_t* out, long long n, unsigned long long seed,
                                            float std_dev) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = f32_to_e4m3(std_dev * normal_at(seed, i));
  }
}

// out[i] = bf16(mean + std * N(0, 1)).
extern "C" __global__ void fill_bf16_normal(__nv_bfloat16* out, long long n,
                                            unsigned long long seed, float mean, float std_dev) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = f32_to_bf16(mean + std_dev * normal_at(seed, i));
  }
}

// out[i] = uniform in [lo, hi).
extern "C" __global__ void fill_f32_uniform(float* out, long long n, unsigned long long seed,
                                            float lo, float hi) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const unsigned long long h =
        splitmix64(seed ^ splitmix64(static_cast<unsigned long long>(i)));
    out[i] = lo + (hi - lo) * (unit_open(h) - 5.9604644775390625e-8f);
  }
}
