// CUDA as host C++: force-included (g++ -include) before every `.cu` of the interpreter build
// (-DDSV3_EMULATE). It turns the CUDA keywords into plain C++, gives the built-in variables,
// barriers, warp collectives, atomics and math intrinsics the kernels use, and leaves the numeric
// types to CUDA's own cuda_bf16.h / cuda_fp8.h, which compile on the host.
//
// Only what the kernels use is here; a kernel that starts using another intrinsic fails to
// compile in this build, which is the point: the interpreter gives it meaning first.
#pragma once

#ifndef DSV3_EMULATE
#error "cuda_emu.h is the interpreter build's prelude: compile with -DDSV3_EMULATE"
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <type_traits>

#include "dsv3/emu/runtime.h"

// ---------------------------------------------------------------------------------------------
// Keywords. Kernels become ordinary functions; a block's static __shared__ variables are
// thread_local statics: the fibers of one block all run on one OS thread, and blocks that run in
// parallel do so on different OS threads, so each running block has its own copy. (They are not
// cleared between blocks, as on the hardware.)
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

// `extern __shared__ T name[]` has no host spelling: kernels declare dynamic shared memory with
// DSV3_DYNAMIC_SMEM (dsv3/common.cuh), which here names the block's dynamic shared window.
#define DSV3_DYNAMIC_SMEM(T, name) T* const name = reinterpret_cast<T*>(::dsv3::emu::block().smem)

#include <cuda_bf16.h>
#include <cuda_fp8.h>

// ---------------------------------------------------------------------------------------------
// Built-in variables
// ---------------------------------------------------------------------------------------------
#define threadIdx (::dsv3::emu::self().thread_idx)
#define blockIdx (::dsv3::emu::block().block_idx)
#define blockDim (::dsv3::emu::block().block_dim)
#define gridDim (::dsv3::emu::block().grid_dim)
#define warpSize 32

// CUDA's device code has min / max overloads for the integer types in the global namespace.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }

// ---------------------------------------------------------------------------------------------
// Barriers and warp collectives
// ---------------------------------------------------------------------------------------------
inline void __syncthreads() { ::dsv3::emu::block_barrier(0, 0, true, "__syncthreads"); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::dsv3::emu::warp_sync(mask, "__syncwarp"); }
inline unsigned __activemask() { return 0xffffffffu; }  // fibers model converged warps only

namespace dsv3 {
namespace emu {

template <class T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                "warp collectives move values of at most 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <class T>
inline T from_bits(uint64_t bits) {
  T v;
  memcpy(&v, &bits, sizeof(T));
  return v;
}

// One shuffle: every lane publishes `v`, then reads lane src_of(lane) (its own value when the
// source lies outside the lane's width-segment, per the CUDA programming guide).
template <class T, class SrcOf>
inline T shuffle(unsigned mask, T v, const char* op, SrcOf src_of) {
  const std::array<uint64_t, 32> all = warp_exchange(mask, to_bits(v), op);
  const int src = src_of(static_cast<int>(self().lane));
  if (src < 0) return v;
  return from_bits<T>(all[static_cast<size_t>(src)]);
}

inline void check_width(int width, const char* op) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    fail(std::string(op) + ": width must be a power of two in [1, 32], got " +
         std::to_string(width));
  }
}

}  // namespace emu
}  // namespace dsv3

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  ::dsv3::emu::check_width(width, "__shfl_sync");
  return ::dsv3::emu::shuffle(mask, v, "__shfl_sync", [&](int lane) {
    return (lane & ~(width - 1)) + (src_lane & (width - 1));
  });
}

template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  ::dsv3::emu::check_width(width, "__shfl_xor_sync");
  return ::dsv3::emu::shuffle(mask, v, "__shfl_xor_sync", [&](int lane) {
    const int src = lane ^ lane_mask;
    return src >= (lane & ~(width - 1)) + width ? -1 : src;
  });
}

template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  ::dsv3::emu::check_width(width, "__shfl_up_sync");
  return ::dsv3::emu::shuffle(mask, v, "__shfl_up_sync", [&](int lane) {
    return (lane & (width - 1)) < static_cast<int>(delta) ? -1 : lane - static_cast<int>(delta);
  });
}

template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  ::dsv3::emu::check_width(width, "__shfl_down_sync");
  return ::dsv3::emu::shuffle(mask, v, "__shfl_down_sync", [&](int lane) {
    return (lane & (width - 1)) + static_cast<int>(delta) >= width
               ? -1
               : lane + static_cast<int>(delta);
  });
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  const auto all = ::dsv3::emu::warp_exchange(mask, pred != 0 ? 1 : 0, "__ballot_sync");
  unsigned bits = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) != 0 && all[l] != 0) bits |= 1u << l;
  }
  return bits;
}
inline int __any_sync(unsigned mask, int pred) {
  const auto all = ::dsv3::emu::warp_exchange(mask, pred != 0 ? 1 : 0, "__any_sync");
  for (unsigned l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) != 0 && all[l] != 0) return 1;
  }
  return 0;
}
inline int __all_sync(unsigned mask, int pred) {
  const auto all = ::dsv3::emu::warp_exchange(mask, pred != 0 ? 1 : 0, "__all_sync");
  for (unsigned l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) != 0 && all[l] == 0) return 0;
  }
  return 1;
}

// sm_80+ warp reductions (redux.sync) and __match_any_sync (sm_70+), over 32-bit integers.
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
  const auto all = ::dsv3::emu::warp_exchange(mask, v, "__reduce_max_sync");
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l) r = static_cast<unsigned>(all[l]) > r ? static_cast<unsigned>(all[l]) : r;
  return r;
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
  const auto all = ::dsv3::emu::warp_exchange(mask, v, "__reduce_min_sync");
  unsigned r = 0xffffffffu;
  for (unsigned l = 0; l < 32; ++l) r = static_cast<unsigned>(all[l]) < r ? static_cast<unsigned>(all[l]) : r;
  return r;
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
  const auto all = ::dsv3::emu::warp_exchange(mask, v, "__reduce_add_sync");
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l) r += static_cast<unsigned>(all[l]);
  return r;
}
inline int __reduce_max_sync(unsigned mask, int v) {
  const auto all = ::dsv3::emu::warp_exchange(mask, static_cast<uint32_t>(v), "__reduce_max_sync");
  int r = static_cast<int>(static_cast<uint32_t>(all[0]));
  for (unsigned l = 1; l < 32; ++l) r = max(r, static_cast<int>(static_cast<uint32_t>(all[l])));
  return r;
}
inline int __reduce_min_sync(unsigned mask, int v) {
  const auto all = ::dsv3::emu::warp_exchange(mask, static_cast<uint32_t>(v), "__reduce_min_sync");
  int r = static_cast<int>(static_cast<uint32_t>(all[0]));
  for (unsigned l = 1; l < 32; ++l) r = min(r, static_cast<int>(static_cast<uint32_t>(all[l])));
  return r;
}
template <class T>
inline unsigned __match_any_sync(unsigned mask, T v) {
  const auto all = ::dsv3::emu::warp_exchange(mask, ::dsv3::emu::to_bits(v), "__match_any_sync");
  const uint64_t mine = ::dsv3::emu::to_bits(v);
  unsigned peers = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) != 0 && all[l] == mine) peers |= 1u << l;
  }
  return peers;
}

// ---------------------------------------------------------------------------------------------
// Atomics. Within a block, fibers never run at the same time; blocks may run on parallel OS
// threads, so global-memory atomics are real host atomics.
// ---------------------------------------------------------------------------------------------
template <class T>
inline T __dsv3_atomic_rmw_float(T* addr, T v, T (*op)(T, T)) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "float atomics of 4 or 8 bytes");
  using Bits = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  Bits* p = reinterpret_cast<Bits*>(addr);
  Bits old_bits = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    T old;
    memcpy(&old, &old_bits, sizeof(T));
    const T next = op(old, v);
    Bits next_bits;
    memcpy(&next_bits, &next, sizeof(T));
    if (__atomic_compare_exchange_n(p, &old_bits, next_bits, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_RELAXED)) {
      return old;
    }
  }
}

inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* a, unsigned v) {
  return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);
}
inline float atomicAdd(float* a, float v) {
  return __dsv3_atomic_rmw_float<float>(a, v, [](float x, float y) { return x + y; });
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); }
inline int atomicCAS(int* a, int expected, int desired) {
  __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return expected;  // the old value either way
}
inline unsigned atomicCAS(unsigned* a, unsigned expected, unsigned desired) {
  __atomic_compare_exchange_n(a, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return expected;
}
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); }
template <class T>
inline T __dsv3_atomic_minmax(T* a, T v, bool is_min) {
  T old = __atomic_load_n(a, __ATOMIC_RELAXED);
  while ((is_min ? v < old : v > old) &&
         !__atomic_compare_exchange_n(a, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
  }
  return old;
}
inline int atomicMin(int* a, int v) { return __dsv3_atomic_minmax(a, v, true); }
inline int atomicMax(int* a, int v) { return __dsv3_atomic_minmax(a, v, false); }
inline unsigned atomicMin(unsigned* a, unsigned v) { return __dsv3_atomic_minmax(a, v, true); }
inline unsigned atomicMax(unsigned* a, unsigned v) { return __dsv3_atomic_minmax(a, v, false); }
inline int atomicOr(int* a, int v) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicOr(unsigned* a, unsigned v) {
  return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);
}

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---------------------------------------------------------------------------------------------
// Memory, address spaces, traps
// ---------------------------------------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) {
  return *p;
}
inline size_t __cvta_generic_to_shared(const void* p) { return ::dsv3::emu::shared_addr(p); }
[[noreturn]] inline void __trap() { ::dsv3::emu::fail("__trap() executed"); }
inline long long clock64() { return static_cast<long long>(__builtin_ia32_rdtsc()); }
inline void __nanosleep(unsigned) {
  ::dsv3::emu::blocked_yield(::dsv3::emu::WaitInfo{"__nanosleep", nullptr, 0});
}

// ---------------------------------------------------------------------------------------------
// Integer and float intrinsics. Host float arithmetic is IEEE round-to-nearest in SSE, which is
// what the _rn intrinsics specify; the approximate ones (__expf, __logf, __fdividef) get the
// accurate host functions (the kernels' tolerances already cover the approximation).
// ---------------------------------------------------------------------------------------------
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

inline float __int_as_float(int x) { return ::dsv3::emu::from_bits<float>(static_cast<uint32_t>(x)); }
inline float __uint_as_float(unsigned x) { return ::dsv3::emu::from_bits<float>(x); }
inline int __float_as_int(float x) { return static_cast<int>(::dsv3::emu::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return static_cast<unsigned>(::dsv3::emu::to_bits(x)); }

// volatile keeps each operation a separately rounded f32 operation (no contraction into an FMA,
// no excess precision), as the _rn intrinsics are on the GPU.
inline float __fadd_rn(float a, float b) {
  volatile float r = a + b;
  return r;
}
inline float __fsub_rn(float a, float b) {
  volatile float r = a - b;
  return r;
}
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;
  return r;
}
inline float __fdiv_rn(float a, float b) {
  volatile float r = a / b;
  return r;
}
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float a) { return __fdiv_rn(1.0f, a); }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
inline float __saturatef(float a) { return a != a ? 0.0f : fminf(fmaxf(a, 0.0f), 1.0f); }
inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
// cos(pi x) / sin(pi x), correctly rounded on the GPU to within an ulp: evaluated in double.
inline float cospif(float x) { return static_cast<float>(cos(M_PI * static_cast<double>(x))); }
inline float sinpif(float x) { return static_cast<float>(sin(M_PI * static_cast<double>(x))); }
inline int __float2int_rn(float a) { return static_cast<int>(nearbyintf(a)); }
inline int __float2int_rz(float a) { return static_cast<int>(a); }

