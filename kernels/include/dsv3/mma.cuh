// Warp-level tensor-core MMA (mma.sync, sm_80+), for kernels whose tiles are too small or too
// irregular for wgmma (moe-dispatch's gate GEMM). Inline PTX lives in kernels/include/dsv3/ only,
// so the interpreter build (DSV3_EMULATE) can give every instruction a host body.
#pragma once

#include <stdint.h>

#ifdef DSV3_EMULATE
#include "dsv3/emu/mma_emu.h"
#endif

namespace dsv3 {

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {c}, {a}, {b}, {c} — C[16x8] += A[16x16] .
// B[16x8] for the warp, f32 accumulators in place. Per lane: a[4] and b[2] hold two bf16 each,
// c[4] four f32, in the PTX ISA's m16n8k16 fragment layout (groupID = lane / 4,
// threadID_in_group = lane % 4; see dsv3/emu/mma_emu.h for the tables). All 32 lanes execute it.
__device__ __forceinline__ void mma_m16n8k16_bf16(float* c, const uint32_t* a, const uint32_t* b) {
#ifdef DSV3_EMULATE
  emu::mma_m16n8k16_bf16(c, a, b);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

}  // namespace dsv3
