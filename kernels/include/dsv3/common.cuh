// Shared basics for every kernel in the workspace: fixed-width types, bf16 load/store helpers and
// the device-side status word kernels use to report bad input (out-of-range ids, positions).
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

// Dynamic shared memory, declared the one way both builds understand: `extern __shared__ T
// name[]` on the GPU; in the interpreter build (dsv3/emu/cuda_emu.h) a pointer to the block's
// dynamic shared window.
#ifndef DSV3_EMULATE
#define DSV3_DYNAMIC_SMEM(T, name) extern __shared__ __align__(16) T name[]
#endif

namespace dsv3 {

// Status codes a kernel may record in a caller-provided `int* status` word. The host side
// (`kernels::gpu::DeviceStatus`) maps them to error messages; keep the two lists in sync.
enum StatusCode : int {
  kStatusOk = 0,
  kStatusIndexOutOfRange = 1,     // a token id >= vocabulary size or < 0
  kStatusPositionOutOfRange = 2,  // a RoPE position outside the precomputed cos/sin table
  kStatusGroupOutOfRange = 3,     // a grouped GEMM's group index (m_indices) or masked row count
                                  // (masked_m) outside its valid range; that tile / group skipped
  kStatusExpertIdOutOfRange = 4,  // an expert id outside [0, E) given to expert_counts; not counted
  kStatusDispatchOutOfRange = 5,  // MoE dispatch: an expert id outside [0, E) (or a slot outside
                                  // the dispatched rows, or a masked expert over m_max); pair dropped
  kStatusMlaOutOfRange = 6,       // MLA decode: a block_table entry outside [0, num_blocks) (its
                                  // tokens masked, nothing read) or a cache_seqlens value outside
                                  // [S_q, max_blocks * 64] (clamped)
};

// Records the first non-zero code (later ones are dropped so the message names the first fault).
__device__ __forceinline__ void record_status(int* status, int code) {
  if (status != nullptr) atomicCAS(status, kStatusOk, code);
}

__device__ __forceinline__ float bf16_to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
// Round-to-nearest-even, the same rounding `half::bf16::from_f32` uses on the host.
__device__ __forceinline__ __nv_bfloat16 f32_to_bf16(float v) { return __float2bfloat16_rn(v); }

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace dsv3
