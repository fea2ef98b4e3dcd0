// Shared-memory operand checks and the address swizzle, common to the emulated Hopper primitives
// (hopper_emu.h). Plain C++: no CUDA built-ins, so the layout tests can compile it on the host.
#pragma once

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include <string>

#include "dsv3/emu/runtime.h"

namespace dsv3 {
namespace emu {

// shared_addr() tags static __shared__ variables with bit 31 (runtime.h); the tag says nothing
// about where the variable sits in the hardware window, so such an address has no swizzle bits.
constexpr uint32_t kStaticSharedTag = 0x80000000u;

inline bool is_static_shared_addr(uint32_t addr) { return (addr & kStaticSharedTag) != 0; }

// Checks a shared-memory operand of `bytes` bytes that PTX wants `align`-byte aligned and returns
// its generic pointer. `dynamic_only`: the primitive needs real window address bits (a swizzled
// TMA box, a wgmma descriptor), which only dynamic shared memory has in the interpreter.
inline uint8_t* smem_operand(const void* p, size_t bytes, uint32_t align, const char* what,
                             bool dynamic_only) {
  const uint32_t addr = shared_addr(p);
  if (is_static_shared_addr(addr)) {
    if (dynamic_only) {
      fail(
          msgf("%s: operand is a static __shared__ variable; the interpreter supports this "
               "operand in dynamic shared memory only",
               what));
    }
    if (reinterpret_cast<uintptr_t>(p) % align != 0) {
      fail(msgf("%s: shared operand %p is not %u-byte aligned", what, p, align));
    }
    return const_cast<uint8_t*>(static_cast<const uint8_t*>(p));
  }
  if (addr % align != 0) {
    fail(msgf("%s: shared address 0x%x is not %u-byte aligned", what, addr, align));
  }
  return shared_ptr(addr, bytes, what);
}

// Checks a global-memory operand's alignment (PTX's rules for cp.async / bulk copies).
inline void check_global_align(const void* p, uint32_t align, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    fail(msgf("%s: global address %p is not %u-byte aligned", what, p, align));
  }
}

// The shared-memory swizzle of TMA (PTX ISA "Tensor-copy: swizzling modes",
// CU_TENSOR_MAP_SWIZZLE_*) and of wgmma operands (PTX ISA "Shared Memory Matrix Layout", swizzle
// modes of the matrix descriptor), as a function of the byte address in the shared window: the
// swizzle span is `swizzle_bytes` (32, 64 or 128) = 2, 4 or 8 chunks of 16 bytes, and the chunk
// index inside the span (address bits [4, 4+b)) is XORed with the 128-byte row index modulo the
// chunk count (address bits [7, 7+b)), b = log2(span / 16). The pattern therefore repeats every
// 256, 512 or 1024 bytes, which is why swizzled tiles start at such a boundary. 0 = no swizzle.
inline uint32_t swizzle_addr(uint32_t addr, uint32_t swizzle_bytes) {
  if (swizzle_bytes == 0) return addr;
  const uint32_t mask = swizzle_bytes / 16 - 1;  // 1, 3 or 7
  return addr ^ (((addr >> 7) & mask) << 4);
}

}  // namespace emu
}  // namespace dsv3
