// The block-scaled FP8 GEMM kernels (sm_90a): three kinds x three tile shapes, each an extern "C"
// entry point named fp8_gemm_<kind>_m<BLOCK_M>n<BLOCK_N>. The body is fp8_gemm_kernel.cuh; the
// host side (tensor maps, shape checks, tile choice) is fp8-gemm/src/{gpu,tiles}.rs.
//
// Every kernel: block 384 threads (2 math warpgroups + 1 producer warpgroup), 1 CTA per SM,
// persistent grid (<= number of SMs), dynamic shared memory = the SMEM column below, which
// tiles.rs uses for the launch (the static_assert keeps the two in agreement).
//
// Instantiations (stages = as many 128-K-block stages as fit next to the epilogue staging in
// 227 KiB, capped at 8; not yet tuned on a device):
//   BLOCK_M BLOCK_N STAGES  SMEM     per math WG        use
//     128     128     5     202320   m64 n128           large M (prefill): best MMA / byte ratio
//      64     128     8     218240   m64 n64 (N split)  medium M, or to get more tiles than SMs
//      64      64     8     144512   m64 n32 (N split)  decode (M <= 64): spreads B over more SMs
#include <cuda.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "fp8_gemm_kernel.cuh"

#define DSV3_FP8_GEMM_KERNEL(NAME, KIND, BM, BN, STAGES, SMEM)                                  \
  extern "C" __global__ void __launch_bounds__(fp8_gemm::kNumThreads, 1)                        \
      NAME(const __grid_constant__ CUtensorMap tmap_a, const __grid_constant__ CUtensorMap tmap_b, \
           const __grid_constant__ CUtensorMap tmap_sa, const float* __restrict__ b_scales,     \
           const __nv_bfloat16* residual, __nv_bfloat16* d, const int* group_info, int* status,  \
           int m, int n, int k, int num_groups) {                                               \
    static_assert(fp8_gemm::Config<BM, BN, STAGES>::kSmemBytes == (SMEM),                       \
                  "shared-memory size out of sync with fp8-gemm/src/tiles.rs");                 \
    fp8_gemm::fp8_gemm_body<KIND, BM, BN, STAGES>(&tmap_a, &tmap_b, &tmap_sa, b_scales,          \
                                                  residual, d, group_info, status, m, n, k,     \
                                                  num_groups);                                  \
  }

#define DSV3_FP8_GEMM_KINDS(SUFFIX, BM, BN, STAGES, SMEM)                                        \
  DSV3_FP8_GEMM_KERNEL(fp8_gemm_nt_##SUFFIX, fp8_gemm::GemmKind::kDense, BM, BN, STAGES, SMEM) \
  DSV3_FP8_GEMM_KERNEL(fp8_gemm_contiguous_##SUFFIX, fp8_gemm::GemmKind::kGroupedContiguous,   \
                       BM, BN, STAGES, SMEM)                                                    \
  DSV3_FP8_GEMM_KERNEL(fp8_gemm_masked_##SUFFIX, fp8_gemm::GemmKind::kGroupedMasked, BM, BN,   \
                       STAGES, SMEM)

DSV3_FP8_GEMM_KINDS(m128n128, 128, 128, 5, 202320)
DSV3_FP8_GEMM_KINDS(m64n128, 64, 128, 8, 218240)
DSV3_FP8_GEMM_KINDS(m64n64, 64, 64, 8, 144512)
