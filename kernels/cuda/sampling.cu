// Greedy argmax and seeded temperature / top-p sampling over rows of f32 logits.
// The rule is defined in kernels::reference::sampling; this is the same rule:
//   e_i = exp(z_i - max z), z_i = logit_i / T (NaN logits count as -inf)
//   nucleus = {i : e_i >= tau}, tau the largest e value whose "e >= tau" mass reaches top_p * sum(e)
//   token = first nucleus index (vocabulary order) whose running nucleus sum exceeds u * mass,
//   u = sampling_uniform(seed, offset, row) (sample_f32) or the caller's uniforms[row]
//   (sample_uniforms_f32; a u outside [0, 1) or NaN picks the last nucleus index, never reads
//   out of bounds).
// tau is found by bisection on the f32 bit pattern in [0, 1] (e_i <= 1 and positive floats order
// like their bit patterns): 31 block-wide passes of sum(e_i >= v ? e_i : 0), exact in the set it
// selects. One block of 1024 threads per row; e_i is recomputed per pass (the row does not fit in
// shared memory at vocab 129280).

#include <math.h>
#include <stdint.h>

#include "dsv3/reduce.cuh"

using namespace dsv3;

constexpr int kThreads = 1024;

// The SplitMix64 finalizer and the uniform draw of kernels::rng (must stay identical).
__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__device__ __forceinline__ float sampling_uniform(uint64_t seed, uint64_t offset, uint64_t row) {
  const uint64_t bits = splitmix64(seed ^ splitmix64(offset + row));
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

__device__ __forceinline__ float ordered(float v) { return isnan(v) ? -INFINITY : v; }

__device__ int row_argmax(const float* row, int vocab, float* sv, int* si) {
  float best = -INFINITY;
  int idx = 0x7fffffff;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) argmax_merge(best, idx, ordered(row[i]), i);
  block_argmax(best, idx, sv, si);
  return idx == 0x7fffffff ? 0 : idx;
}

extern "C" __global__ void __launch_bounds__(kThreads) argmax_f32(const float* logits, int* out,
                                                                  int vocab) {
  __shared__ float sv[32];
  __shared__ int si[32];
  const float* row = logits + static_cast<long>(blockIdx.x) * vocab;
  const int idx = row_argmax(row, vocab, sv, si);
  if (threadIdx.x == 0) out[blockIdx.x] = idx;
}

// Row blockIdx.x of a sampling launch with uniform u: writes out[blockIdx.x]. The uniform is an
// argument (not drawn here) so one body serves both entry points below.
__device__ void sample_row(const float* logits, const float* temperature, const float* top_p,
                           int* out, int vocab, float u) {
  __shared__ float scratch[32];
  __shared__ int si[32];
  __shared__ float warp_totals[32];
  __shared__ int found;
  const int r = blockIdx.x;
  const float* row = logits + static_cast<long>(r) * vocab;
  const float t = temperature[r];
  if (t == 0.0f) {
    const int idx = row_argmax(row, vocab, scratch, si);
    if (threadIdx.x == 0) out[r] = idx;
    return;
  }
  // Division by t, as the reference does (z_i = logit_i / T), not multiplication by 1/T.
  float local_max = -INFINITY;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) local_max = fmaxf(local_max, ordered(row[i]) / t);
  const float max_z = block_max(local_max, scratch);
  if (!isfinite(max_z)) {
    // Every logit -inf/NaN, or logit / T overflowed to +inf: the weights would be NaN, so the
    // reference takes the limit of the distribution, the greedy argmax (token 0 if all -inf).
    const int idx = row_argmax(row, vocab, scratch, si);
    if (threadIdx.x == 0) out[r] = idx;
    return;
  }
  auto weight = [&](int i) { return expf(ordered(row[i]) / t - max_z); };
  auto mass = [&](float threshold) {
    float acc = 0.0f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float e = weight(i);
      if (e >= threshold) acc += e;
    }
    return block_sum(acc, scratch);
  };

  float tau = 0.0f;
  const float p = top_p[r];
  if (p < 1.0f) {
    const float target = p * mass(0.0f);
    // Largest bit pattern v in [0, 1.0f] with mass(v) >= target; mass(0) >= target always.
    uint32_t lo = 0, hi = __float_as_uint(1.0f);
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      if (mass(__uint_as_float(mid)) >= target) lo = mid; else hi = mid - 1;
    }
    tau = __uint_as_float(lo);
  }
  const float nucleus_mass = mass(tau);
  const float goal = u * nucleus_mass;

  // Chunked inclusive scan in vocabulary order: the first index whose running sum exceeds goal.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (threadIdx.x == 0) found = 0x7fffffff;
  float carry = 0.0f;
  int last_in_nucleus = -1;
  for (int base = 0; base < vocab; base += blockDim.x) {
    const int i = base + threadIdx.x;
    float e = 0.0f;
    if (i < vocab) {
      e = weight(i);
      if (e >= tau) last_in_nucleus = i; else e = 0.0f;
    }
    float x = e;  // warp inclusive scan
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const float y = __shfl_up_sync(0xffffffffu, x, o);
      if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) warp_totals[warp] = x;
    __syncthreads();
    float warp_prefix = 0.0f, chunk_total = 0.0f;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) {
      if (w < warp) warp_prefix += warp_totals[w];
      chunk_total += warp_totals[w];
    }
    const float running = carry + warp_prefix + x;
    if (e > 0.0f && running > goal) atomicMin(&found, i);
    __syncthreads();
    if (found != 0x7fffffff) break;
    carry += chunk_total;
  }
  // Rounding can leave the goal unreached: the reference then takes the last nucleus index.
  float as_float = static_cast<float>(last_in_nucleus);
  int last_idx = last_in_nucleus;
  block_argmax(as_float, last_idx, scratch, si);
  if (threadIdx.x == 0) out[r] = found != 0x7fffffff ? found : (last_idx < 0 ? 0 : last_idx);
}

// Row r draws sampling_uniform(seed, offset, r): one stream per launch.
extern "C" __global__ void __launch_bounds__(kThreads)
    sample_f32(const float* logits, const float* temperature, const float* top_p, int* out,
               int vocab, unsigned long long seed, unsigned long long offset) {
  sample_row(logits, temperature, top_p, out, vocab, sampling_uniform(seed, offset, blockIdx.x));
}

// Row r uses uniforms[r], drawn by the caller: the engine gives every request its own stream
// (sampling_uniform(request seed, token index, 0)), which no single (seed, offset) reproduces.
extern "C" __global__ void __launch_bounds__(kThreads)
    sample_uniforms_f32(const float* logits, const float* temperature, const float* top_p,
                        const float* uniforms, int* out, int vocab) {
  sample_row(logits, temperature, top_p, out, vocab, uniforms[blockIdx.x]);
}
