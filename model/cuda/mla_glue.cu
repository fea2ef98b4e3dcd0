// Glue kernels of the model's CUDA forward pass that the kernel crates do not have (spec §3.1):
// the MLA KV append, the query / output absorptions and a row gather/scatter. Simple and correct
// first: one block per (token) or (token, head), f32 arithmetic, BF16 in and out, rounding at the
// same points as the CPU backend's `fp8` precision (model/src/cpu/forward.rs).

#include "dsv3/common.cuh"
#include "dsv3/reduce.cuh"

using namespace dsv3;

// KV append: for token t, entry = [RMSNorm(kv[t, :d_c], norm_w) ; RoPE(kv[t, d_c:], pos[t])]
// written as BF16 into cache row slots[t] (`[num_entries, d_c + d_rope]`, entry index =
// block * 64 + pos % 64, computed on the host from the block tables). The norm is rms_norm.cu's
// arithmetic (x * inv_rms * w, inv_rms = 1 / sqrt(mean + eps)); the rotation is rope.cu's
// (interleaved pairs, table [max_positions, d_rope / 2] of (cos, sin)). A position outside the
// table or a slot outside the cache records a status code and writes nothing.
// Grid: one block per token; blockDim a multiple of 32.
extern "C" __global__ void mla_kv_append_bf16(const __nv_bfloat16* kv, const __nv_bfloat16* norm_w,
                                              const float2* cos_sin, const int* positions,
                                              const int* slots, __nv_bfloat16* cache, int d_c,
                                              int d_rope, int max_positions, int num_entries,
                                              float eps, int* status) {
  __shared__ float scratch[32];
  const int t = blockIdx.x;
  const int width = d_c + d_rope;
  const int p = positions[t];
  const int slot = slots[t];
  if (p < 0 || p >= max_positions) {
    if (threadIdx.x == 0) record_status(status, kStatusPositionOutOfRange);
    return;
  }
  if (slot < 0 || slot >= num_entries) {
    if (threadIdx.x == 0) record_status(status, kStatusMlaOutOfRange);
    return;
  }
  const __nv_bfloat16* src = kv + static_cast<long long>(t) * width;
  __nv_bfloat16* dst = cache + static_cast<long long>(slot) * width;

  float sum_sq = 0.0f;
  for (int c = threadIdx.x; c < d_c; c += blockDim.x) {
    const float v = bf16_to_f32(src[c]);
    sum_sq += v * v;
  }
  const float total = block_sum(sum_sq, scratch);
  const float inv_rms = 1.0f / sqrtf(total / static_cast<float>(d_c) + eps);
  for (int c = threadIdx.x; c < d_c; c += blockDim.x) {
    dst[c] = f32_to_bf16(bf16_to_f32(src[c]) * inv_rms * bf16_to_f32(norm_w[c]));
  }

  const int half = d_rope / 2;
  const float2* cs_row = cos_sin + static_cast<long long>(p) * half;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float x = bf16_to_f32(src[d_c + 2 * i]);
    const float y = bf16_to_f32(src[d_c + 2 * i + 1]);
    const float2 cs = cs_row[i];
    dst[d_c + 2 * i] = f32_to_bf16(x * cs.x - y * cs.y);
    dst[d_c + 2 * i + 1] = f32_to_bf16(x * cs.y + y * cs.x);
  }
}

// Query absorption: q_abs[t, h] = [W_UK[h]^T q_nope[t, h] ; q_pe[t, h]] with
// q [T, H, d_nope + d_rope] (RoPE already applied to q_pe), w_uk [H, d_nope, d_c] BF16 and
// q_abs [T, H, d_c + d_rope]; f32 accumulation in i order, one BF16 rounding.
// Grid: T * H blocks; dynamic shared memory d_nope floats.
extern "C" __global__ void mla_absorb_q_bf16(const __nv_bfloat16* q, const __nv_bfloat16* w_uk,
                                             __nv_bfloat16* q_abs, int heads, int d_nope,
                                             int d_rope, int d_c) {
  DSV3_DYNAMIC_SMEM(float, q_nope);
  const long long th = blockIdx.x;
  const int h = static_cast<int>(th % heads);
  const __nv_bfloat16* qh = q + th * (d_nope + d_rope);
  __nv_bfloat16* out = q_abs + th * (d_c + d_rope);
  for (int i = threadIdx.x; i < d_nope; i += blockDim.x) q_nope[i] = bf16_to_f32(qh[i]);
  __syncthreads();
  const __nv_bfloat16* w = w_uk + static_cast<long long>(h) * d_nope * d_c;
  for (int c = threadIdx.x; c < d_c; c += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < d_nope; ++i) acc += q_nope[i] * bf16_to_f32(w[static_cast<long long>(i) * d_c + c]);
    out[c] = f32_to_bf16(acc);
  }
  for (int i = threadIdx.x; i < d_rope; i += blockDim.x) out[d_c + i] = qh[d_nope + i];
}

// Output absorption: o[t, h * d_v + j] = sum_c W_UV[h][j, c] * o_lat[t, h, c] with
// o_lat [T, H, d_c], w_uv [H, d_v, d_c] BF16, o [T, H * d_v]; one warp per output, f32.
// Grid: T * H blocks; dynamic shared memory d_c floats; blockDim a multiple of 32.
extern "C" __global__ void mla_absorb_o_bf16(const __nv_bfloat16* o_lat, const __nv_bfloat16* w_uv,
                                             __nv_bfloat16* o, int heads, int d_v, int d_c) {
  DSV3_DYNAMIC_SMEM(float, lat);
  const long long th = blockIdx.x;
  const int h = static_cast<int>(th % heads);
  const __nv_bfloat16* src = o_lat + th * d_c;
  for (int c = threadIdx.x; c < d_c; c += blockDim.x) lat[c] = bf16_to_f32(src[c]);
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int j = warp; j < d_v; j += warps) {
    const __nv_bfloat16* w = w_uv + (static_cast<long long>(h) * d_v + j) * d_c;
    float acc = 0.0f;
    for (int c = lane; c < d_c; c += 32) acc += lat[c] * bf16_to_f32(w[c]);
    acc = warp_sum(acc);
    if (lane == 0) o[th * d_v + j] = f32_to_bf16(acc);
  }
}

// Row copy: dst[dst_rows[i]] = src[src_rows[i]] for i < n_rows, rows of `width` BF16 values
// (a null index array means the identity). Indices are the host's; rows outside
// [0, src_len) / [0, dst_len) record kStatusIndexOutOfRange and are skipped.
// Grid: one block per copied row.
extern "C" __global__ void copy_rows_bf16(const __nv_bfloat16* src, const int* src_rows,
                                          int src_len, __nv_bfloat16* dst, const int* dst_rows,
                                          int dst_len, int width, int* status) {
  const int i = blockIdx.x;
  const int s = src_rows != nullptr ? src_rows[i] : i;
  const int d = dst_rows != nullptr ? dst_rows[i] : i;
  if (s < 0 || s >= src_len || d < 0 || d >= dst_len) {
    if (threadIdx.x == 0) record_status(status, kStatusIndexOutOfRange);
    return;
  }
  const __nv_bfloat16* a = src + static_cast<long long>(s) * width;
  __nv_bfloat16* b = dst + static_cast<long long>(d) * width;
  for (int c = threadIdx.x; c < width; c += blockDim.x) b[c] = a[c];
}
