// The emulated CUtensorMap: what `cuTensorMapEncodeTiled` would encode, in a layout of our own
// inside the same 128 opaque bytes. The Rust emulated device writes it (kernels::gpu::tensor_map_2d
// in the `emulate` build, `#[repr(C)]` mirror of this struct) and the interpreter's TMA reads it.
#pragma once

#include <stdint.h>

namespace dsv3 {
namespace emu {

constexpr uint32_t kTensorMapMagic = 0x44534d54u;  // "TMSD"

struct EmuTensorMap {
  uint32_t magic;          // kTensorMapMagic, so a zeroed or foreign map is refused
  uint32_t rank;           // 1..5
  uint32_t elem_bytes;     // 1, 2, 4 or 8
  uint32_t swizzle_bytes;  // 0 (none), 32, 64 or 128
  uint64_t global_address;
  uint64_t dims[5];           // elements, innermost first
  uint64_t strides_bytes[5];  // strides_bytes[0] is the element size; [i] between index steps of dim i
  uint32_t box[5];            // box extent per dimension, innermost first
};
static_assert(sizeof(EmuTensorMap) <= 128, "must fit in a CUtensorMap");

}  // namespace emu
}  // namespace dsv3
