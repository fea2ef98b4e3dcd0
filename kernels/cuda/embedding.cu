// Embedding gather: out[t] = table[ids[t]]. An id outside [0, vocab) writes a zero row and records
// kStatusIndexOutOfRange in the status word (checked by the caller), never reads out of bounds.
// One block per token; 16-byte copies when hidden % 8 == 0.

#include "dsv3/common.cuh"
#include "dsv3/vec.cuh"

using namespace dsv3;

extern "C" __global__ void embedding_bf16(const int* ids, const __nv_bfloat16* table,
                                          __nv_bfloat16* out, int vocab, int hidden, int vec8,
                                          int* status) {
  const long t = blockIdx.x;
  const int id = ids[t];
  const bool valid = id >= 0 && id < vocab;
  if (!valid && threadIdx.x == 0) record_status(status, kStatusIndexOutOfRange);
  const __nv_bfloat16* src = table + static_cast<long>(valid ? id : 0) * hidden;
  __nv_bfloat16* dst = out + t * hidden;
  if (vec8) {
    const Bf16x8 zero = {};
    for (int c = threadIdx.x * 8; c < hidden; c += blockDim.x * 8) {
      *reinterpret_cast<Bf16x8*>(dst + c) = valid ? *reinterpret_cast<const Bf16x8*>(src + c) : zero;
    }
  } else {
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
      dst[c] = valid ? src[c] : __float2bfloat16_rn(0.0f);
    }
  }
}
