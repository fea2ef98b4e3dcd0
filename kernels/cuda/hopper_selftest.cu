// Self-tests for the Hopper primitives in dsv3/hopper.cuh. Each kernel exercises one mechanism in
// the simplest correct way; the Rust side launches them and compares with CPU results.
//
//   hopper_bulk_copy_selftest   grid 1, block 128, dyn smem n*4        dst = 2 * src
//   hopper_tma_tile_selftest    grid (ceil(cols/64), ceil(rows/64)), block 128,
//                               dyn smem 64*64*2 + 1024                dst = src (bf16)
//   hopper_wgmma_bf16_selftest  grid 1, block 128, dyn smem 2*64*128 + 1024   d = a * b^T
//   hopper_wgmma_e4m3_selftest  grid 1, block 128, dyn smem 2*64*128 + 1024   d = a * b^T
//   hopper_wgmma_bf16_tn_selftest  grid 1, block 128, dyn smem 2*64*128 + 1024  d = a * b
//                               (b [k, 64] row-major: the N-major "transposed" B operand)
#include <cuda.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "dsv3/common.cuh"
#include "dsv3/hopper.cuh"

namespace {

constexpr int kTile = 64;             // rows (M = N = 64) of every tile here
constexpr uint32_t kRowBytes = 128;   // bytes per swizzled tile row
constexpr uint32_t kTileBytes = kTile * kRowBytes;  // 8 KiB, a multiple of the 1 KiB atom

// Copies a [64 rows x 128 bytes] K-chunk (rows `row_stride_bytes` apart in global memory) into a
// 128B-swizzled smem tile with 16-byte generic stores. Called by all 128 threads.
__device__ __forceinline__ void load_chunk_swizzled(uint8_t* tile, const uint8_t* src,
                                                    size_t row_stride_bytes) {
  constexpr int kChunksPerRow = kRowBytes / 16;
  for (int idx = threadIdx.x; idx < kTile * kChunksPerRow; idx += blockDim.x) {
    const int row = idx / kChunksPerRow;
    const int chunk = idx % kChunksPerRow;
    const uint8_t* g = src + static_cast<size_t>(row) * row_stride_bytes + chunk * 16;
    const uint4 v = *reinterpret_cast<const uint4*>(g);
    *reinterpret_cast<uint4*>(tile + dsv3::swizzle_128b(row, chunk * 16)) = v;
  }
}

// Writes a warpgroup's m64n64 f32 accumulators to a row-major [64, 64] matrix.
__device__ __forceinline__ void store_acc_64x64(float* d, const float (&acc)[32]) {
  const int t = threadIdx.x & 127;
#pragma unroll
  for (int i = 0; i < 32; i += 2) {
    const int row = dsv3::wgmma_acc_row(t, i);
    const int col = dsv3::wgmma_acc_col(t, i);  // even; acc[i + 1] is (row, col + 1)
    *reinterpret_cast<float2*>(d + row * kTile + col) = make_float2(acc[i], acc[i + 1]);
  }
}

// Which wgmma the shared test body issues.
enum class WgmmaTest { kBf16, kE4m3, kBf16TransB };

// Shared body of the wgmma tests. Each K chunk of A is 128 bytes per row (64 bf16 or 128 e4m3),
// consumed as 4 MMAs of 32 bytes of K each. B is K-major like A ([64, k] rows), except for
// kBf16TransB: B is [k, 64] row-major, so a chunk is 64 K rows of 128 bytes (64 N values each) and
// one k16 MMA consumes 16 of those rows (2048 bytes) through an N-major descriptor.
template <WgmmaTest kTest>
__device__ __forceinline__ void wgmma_selftest_body(const uint8_t* a, const uint8_t* b, float* d,
                                                    int k) {
  constexpr bool kBf16 = kTest != WgmmaTest::kE4m3;
  DSV3_DYNAMIC_SMEM(uint8_t, dyn_smem);
  uint8_t* smem_a = dsv3::smem_align_up<1024>(dyn_smem);
  uint8_t* smem_b = smem_a + kTileBytes;
  const uint32_t addr_a = dsv3::smem_u32(smem_a);
  const uint32_t addr_b = dsv3::smem_u32(smem_b);

  const size_t row_bytes = static_cast<size_t>(k) * (kBf16 ? 2 : 1);
  const int chunks = static_cast<int>(row_bytes / kRowBytes);

  float acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.0f;

  for (int c = 0; c < chunks; ++c) {
    load_chunk_swizzled(smem_a, a + static_cast<size_t>(c) * kRowBytes, row_bytes);
    if constexpr (kTest == WgmmaTest::kBf16TransB) {
      load_chunk_swizzled(smem_b, b + static_cast<size_t>(c) * kTileBytes, kRowBytes);
    } else {
      load_chunk_swizzled(smem_b, b + static_cast<size_t>(c) * kRowBytes, row_bytes);
    }
    // Generic-proxy smem writes -> visible to wgmma (async proxy), then to the whole warpgroup.
    dsv3::fence_proxy_async_shared();
    __syncthreads();

    dsv3::warpgroup_fence_operand(acc);
    dsv3::wgmma_fence();
#pragma unroll
    for (int s = 0; s < 4; ++s) {
      // 32 bytes of K per MMA inside the 128-byte swizzled row.
      const uint64_t desc_a = dsv3::make_smem_desc_k_sw128(addr_a + s * 32);
      const bool accumulate = (c > 0) || (s > 0);
      if constexpr (kTest == WgmmaTest::kBf16TransB) {
        // N = 64 is one MN block, so the block stride (leading byte offset) is never stepped.
        const uint64_t desc_b = dsv3::make_smem_desc_mn_sw128(addr_b + s * 2048, kTileBytes);
        dsv3::wgmma_m64nNk16_bf16<64, true>(acc, desc_a, desc_b, accumulate);
      } else if constexpr (kTest == WgmmaTest::kBf16) {
        const uint64_t desc_b = dsv3::make_smem_desc_k_sw128(addr_b + s * 32);
        dsv3::wgmma_m64n64k16_bf16(acc, desc_a, desc_b, accumulate);
      } else {
        const uint64_t desc_b = dsv3::make_smem_desc_k_sw128(addr_b + s * 32);
        dsv3::wgmma_m64n64k32_e4m3(acc, desc_a, desc_b, accumulate);
      }
    }
    dsv3::wgmma_commit_group();
    dsv3::wgmma_wait_group<0>();
    dsv3::warpgroup_fence_operand(acc);
    // The MMAs have finished reading smem; keep the next chunk's stores behind every thread's wait.
    __syncthreads();
  }

  store_acc_64x64(d, acc);
}

}  // namespace

// 1-D bulk copy global -> smem (mbarrier complete_tx), x2 in smem, 1-D bulk copy smem -> global.
// grid (1,1,1), block (128,1,1), dynamic smem n*4 bytes (n*4 a multiple of 16, <= 48 KiB);
// src and dst 16-byte aligned.
extern "C" __global__ void hopper_bulk_copy_selftest(const float* src, float* dst, int n) {
  DSV3_DYNAMIC_SMEM(uint8_t, dyn_smem);
  __shared__ __align__(8) uint64_t bar;
  float* buf = reinterpret_cast<float*>(dyn_smem);
  if (n <= 0) return;
  const uint32_t bytes = static_cast<uint32_t>(n) * 4u;

  if (threadIdx.x == 0) {
    dsv3::mbar_init(&bar, 1);
    dsv3::fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x == 0) {
    dsv3::mbar_arrive_expect_tx(&bar, bytes);
    dsv3::bulk_copy_g2s(buf, src, bytes, &bar);
  }
  dsv3::mbar_wait(&bar, 0, __func__);

  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] *= 2.0f;
  dsv3::fence_proxy_async_shared();  // our generic stores -> visible to the bulk store's reads
  __syncthreads();

  if (threadIdx.x == 0) {
    dsv3::bulk_copy_s2g(dst, buf, bytes);
    dsv3::bulk_commit_group();
    dsv3::bulk_wait_group<0>();
    dsv3::mbar_inval(&bar);  // everyone passed the wait before the __syncthreads above
  }
}

// 2-D TMA tile load (128B swizzle, zero OOB fill) + read-back through dsv3::swizzle_128b.
// grid (ceil(cols/64), ceil(rows/64)), block (128,1,1), dynamic smem 64*64*2 + 1024 bytes.
// src_map: bf16, rank 2, dims {cols, rows}, stride {cols*2}, box {64, 64}, SWIZZLE_128B.
extern "C" __global__ void hopper_tma_tile_selftest(const __grid_constant__ CUtensorMap src_map,
                                                    __nv_bfloat16* dst, int rows, int cols) {
  DSV3_DYNAMIC_SMEM(uint8_t, dyn_smem);
  __shared__ __align__(8) uint64_t bar;
  uint8_t* tile = dsv3::smem_align_up<1024>(dyn_smem);
  const int col0 = blockIdx.x * kTile;
  const int row0 = blockIdx.y * kTile;

  if (threadIdx.x == 0) {
    dsv3::prefetch_tensormap(&src_map);
    dsv3::mbar_init(&bar, 1);
    dsv3::fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x == 0) {
    // The transaction count is always the full box, out-of-bound parts included (zero-filled).
    dsv3::mbar_arrive_expect_tx(&bar, kTile * kTile * sizeof(__nv_bfloat16));
    dsv3::tma_load_2d(tile, &src_map, &bar, col0, row0);
  }
  dsv3::mbar_wait(&bar, 0, __func__);

  for (int idx = threadIdx.x; idx < kTile * kTile; idx += blockDim.x) {
    const int r = idx / kTile;
    const int c = idx % kTile;
    const int gr = row0 + r;
    const int gc = col0 + c;
    if (gr < rows && gc < cols) {
      const __nv_bfloat16 v = *reinterpret_cast<const __nv_bfloat16*>(
          tile + dsv3::swizzle_128b(r, c * static_cast<uint32_t>(sizeof(__nv_bfloat16))));
      dst[static_cast<size_t>(gr) * cols + gc] = v;
    }
  }

  __syncthreads();
  if (threadIdx.x == 0) dsv3::mbar_inval(&bar);
}

// d[64,64] = a[64,k] * b[64,k]^T, bf16 in, f32 out, via wgmma m64n64k16 from swizzled smem.
// grid 1, block 128, dynamic smem 2*64*128 + 1024 bytes; k a multiple of 64; a, b 16-byte aligned.
extern "C" __global__ void hopper_wgmma_bf16_selftest(const __nv_bfloat16* a,
                                                      const __nv_bfloat16* b, float* d, int k) {
  wgmma_selftest_body<WgmmaTest::kBf16>(reinterpret_cast<const uint8_t*>(a),
                                        reinterpret_cast<const uint8_t*>(b), d, k);
}

// d[64,64] = a[64,k] * b[k,64], bf16 in, f32 out, via wgmma m64n64k16 with B N-major ("trans-b",
// the layout the MLA decode kernel's P . V uses). Same launch as hopper_wgmma_bf16_selftest.
extern "C" __global__ void hopper_wgmma_bf16_tn_selftest(const __nv_bfloat16* a,
                                                         const __nv_bfloat16* b, float* d, int k) {
  wgmma_selftest_body<WgmmaTest::kBf16TransB>(reinterpret_cast<const uint8_t*>(a),
                                              reinterpret_cast<const uint8_t*>(b), d, k);
}

// d[64,64] = a[64,k] * b[64,k]^T, e4m3 in, f32 out, via wgmma m64n64k32 from swizzled smem.
// grid 1, block 128, dynamic smem 2*64*128 + 1024 bytes; k a multiple of 128; a, b 16-byte aligned.
extern "C" __global__ void hopper_wgmma_e4m3_selftest(const uint8_t* a, const uint8_t* b, float* d,
                                                      int k) {
  wgmma_selftest_body<WgmmaTest::kE4m3>(a, b, d, k);
}
