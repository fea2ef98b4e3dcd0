// Emulated wgmma.mma_async (PTX ISA "Asynchronous Warpgroup Level Matrix Multiply-Accumulate
// Instructions"), both operands from shared memory through matrix descriptors, f32 accumulators.
//
// Written from the PTX ISA's tables, independently of hopper.cuh's own helpers (make_smem_desc,
// swizzle_128b, wgmma_acc_row/col): kernels/emulate/tests/layouts_vs_cute.cpp checks these
// functions against CuTe's layouts, so a mistake shared by a kernel and its helper shows.
#pragma once

#include <stdint.h>
#include <string.h>

#include "dsv3/emu/runtime.h"
#include "dsv3/emu/smem_operand.h"

namespace dsv3 {
namespace emu {

// ---- Matrix descriptor (PTX ISA "Matrix Descriptor Format") ---------------------------------
struct GmmaDesc {
  uint32_t start;          // bits 0-13, in 16-byte units
  uint32_t lbo;            // leading dimension byte offset, bits 16-29, 16-byte units
  uint32_t sbo;            // stride dimension byte offset, bits 32-45, 16-byte units
  uint32_t base_offset;    // bits 49-51
  uint32_t swizzle_bytes;  // bits 62-63: 0 none, 1 128B, 2 64B, 3 32B
};

inline GmmaDesc decode_gmma_desc(uint64_t d) {
  static const uint32_t kSwizzle[4] = {0, 128, 64, 32};
  GmmaDesc g;
  g.start = static_cast<uint32_t>(d & 0x3FFF) << 4;
  g.lbo = static_cast<uint32_t>((d >> 16) & 0x3FFF) << 4;
  g.sbo = static_cast<uint32_t>((d >> 32) & 0x3FFF) << 4;
  g.base_offset = static_cast<uint32_t>((d >> 49) & 0x7);
  g.swizzle_bytes = kSwizzle[(d >> 62) & 0x3];
  return g;
}

// ---- Operand addresses (PTX ISA "Shared Memory Matrix Layout") ------------------------------
// The ISA describes each operand as repetitions of "core matrices" of 8 rows x 16 bytes. With
// T = 16 / elem_bytes elements per 16-byte chunk and W = swizzle span / 16 chunks (1 for none),
// the canonical layouts, in CuTe's (shape):(stride) notation with T-element strides written as
// element counts and LBO / SBO in bytes, are:
//   K-major, no swizzle:  ((8,m),(T,2k)) : ((1T,SBO),(1,LBO))
//   K-major, swizzled:    ((8,m),(T,2k)) : ((WT,SBO),(1,T))      (LBO unused)
//   MN-major, no swizzle: ((T,1,m),(8,k)) : ((1,T,SBO),(1T,LBO))
//   MN-major, swizzled:   ((T,W,m),(8,k)) : ((1,T,LBO),(WT,SBO))
// The address so formed is then swizzled as a whole (swizzle_addr). That is what lets a kernel
// step K inside a swizzled row by adding bytes to the start address. The base-offset field would
// correct for a pattern not starting at its repeat boundary; nothing here uses it.

// Byte address of element (mn, k) of a K-major operand (A, or B indexed [n][k]).
inline uint32_t gmma_k_major_addr(const GmmaDesc& g, uint32_t elem_bytes, uint32_t mn, uint32_t k) {
  const uint32_t t = 16 / elem_bytes;
  uint32_t a = g.start + (mn / 8) * g.sbo;
  if (g.swizzle_bytes == 0) {
    a += (mn % 8) * 16 + (k / t) * g.lbo + (k % t) * elem_bytes;
  } else {
    // One instruction's K (32 bytes) never leaves a row of the span (>= 32 bytes).
    a += (mn % 8) * g.swizzle_bytes + k * elem_bytes;
  }
  return swizzle_addr(a, g.swizzle_bytes);
}

// Byte address of element (mn, k) of an MN-major operand (B of a transposed 16-bit wgmma).
inline uint32_t gmma_mn_major_addr(const GmmaDesc& g, uint32_t elem_bytes, uint32_t mn,
                                   uint32_t k) {
  const uint32_t t = 16 / elem_bytes;
  uint32_t a = g.start + (mn % t) * elem_bytes;
  if (g.swizzle_bytes == 0) {
    a += (mn / t) * g.sbo + (k % 8) * 16 + (k / 8) * g.lbo;
  } else {
    const uint32_t w = g.swizzle_bytes / 16;
    a += ((mn / t) % w) * 16 + (mn / (t * w)) * g.lbo + (k % 8) * g.swizzle_bytes + (k / 8) * g.sbo;
  }
  return swizzle_addr(a, g.swizzle_bytes);
}

// ---- Accumulator fragment (PTX ISA "Register Fragments": wgmma .m64nNk*, matrix D) ----------
// Warp w of the warpgroup owns rows [16w, 16w + 16). Inside them the warp's layout is the m16n8
// accumulator pattern of mma.sync, repeated every 8 columns: lane = 4 * groupID +
// threadID_in_group, and the thread's registers d[4j .. 4j+3] cover columns 8j + 2 *
// threadID_in_group + {0, 1} of rows groupID (d[4j], d[4j+1]) and groupID + 8 (d[4j+2], d[4j+3]).
struct AccCoord {
  uint32_t row, col;
};

inline AccCoord wgmma_acc_coord(uint32_t thread_in_warpgroup, uint32_t reg) {
  const uint32_t warp = thread_in_warpgroup / 32, lane = thread_in_warpgroup % 32;
  const uint32_t group = lane / 4, tig = lane % 4;
  const uint32_t j = reg / 4, r = reg % 4;
  return {16 * warp + group + (r >= 2 ? 8u : 0u), 8 * j + 2 * tig + (r % 2)};
}

// ---- Element decoding ------------------------------------------------------------------------
inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// OCP e4m3 (FN): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, S.1111.111 is NaN.
inline float e4m3_bits_to_float(uint8_t v) {
  const int sign = v >> 7, exp = (v >> 3) & 15, man = v & 7;
  float mag;
  if (exp == 15 && man == 7) {
    mag = __builtin_nanf("");
  } else if (exp == 0) {
    mag = static_cast<float>(man) * (1.0f / 512.0f);  // man / 8 * 2^-6
  } else {
    mag = (1.0f + static_cast<float>(man) / 8.0f) * static_cast<float>(1 << exp) / 128.0f;
  }
  return sign ? -mag : mag;
}

enum class GmmaType { kBf16, kE4m3 };

inline uint32_t gmma_elem_bytes(GmmaType t) { return t == GmmaType::kBf16 ? 2 : 1; }
// K of one instruction: 32 bytes of each operand row.
inline uint32_t gmma_k(GmmaType t) { return t == GmmaType::kBf16 ? 16 : 32; }

// Reads one operand element at shared byte address `addr` of this block's window.
inline float gmma_load(GmmaType t, uint32_t addr, const char* what) {
  const uint8_t* p = shared_ptr(addr, gmma_elem_bytes(t), what);
  if (t == GmmaType::kE4m3) return e4m3_bits_to_float(*p);
  uint16_t h;
  memcpy(&h, p, 2);
  return bf16_bits_to_float(h);
}

// Every e4m3 code's value, so the inner loops decode with one load.
inline const float* e4m3_table() {
  static const struct Table {
    float v[256];
    Table() {
      for (int i = 0; i < 256; ++i) v[i] = e4m3_bits_to_float(static_cast<uint8_t>(i));
    }
  } table;
  return table.v;
}

// Reads one operand's row (A: an M row; B: an N row, or an N column of an MN-major B) of `kk`
// elements from the block's dynamic shared memory, through the descriptor's layout. The bounds
// check is the same as shared_ptr()'s, done inline: this is the interpreter's hottest loop.
inline void gmma_load_row(GmmaType type, const GmmaDesc& g, bool mn_major, uint32_t mn,
                          uint32_t kk, const uint8_t* smem, uint32_t smem_bytes, const char* what,
                          float* out) {
  const uint32_t eb = gmma_elem_bytes(type);
  const float* e4m3 = e4m3_table();
  // K-major: the 16 bytes of a core-matrix row are contiguous and the swizzle permutes whole
  // 16-byte chunks, so one address per chunk serves 16 / eb elements. MN-major rows are
  // strided: one address per element.
  const uint32_t run = mn_major ? 1 : 16 / eb;
  for (uint32_t k0 = 0; k0 < kk; k0 += run) {
    const uint32_t addr =
        mn_major ? gmma_mn_major_addr(g, eb, mn, k0) : gmma_k_major_addr(g, eb, mn, k0);
    const uint32_t bytes = run * eb;
    if (static_cast<uint64_t>(addr) + bytes > smem_bytes) {
      shared_ptr(addr, bytes, what);  // fails with the usual message
    }
    const uint8_t* p = smem + addr;
    for (uint32_t j = 0; j < run; ++j) {
      if (type == GmmaType::kE4m3) {
        out[k0 + j] = e4m3[p[j]];
      } else {
        uint16_t h;
        memcpy(&h, p + 2 * j, 2);
        out[k0 + j] = bf16_bits_to_float(h);
      }
    }
  }
}

inline void wgmma_fragment(uint32_t thread_in_warpgroup, uint32_t n, GmmaType type, bool trans_b,
                           uint64_t desc_a, uint64_t desc_b, bool scale_d, float* d) {
  const GmmaDesc ga = decode_gmma_desc(desc_a), gb = decode_gmma_desc(desc_b);
  if (ga.base_offset != 0 || gb.base_offset != 0) {
    fail(msgf("wgmma: matrix descriptor with a non-zero base offset (A %u, B %u) is not supported",
              ga.base_offset, gb.base_offset));
  }
  const BlockState& blk = block();
  const uint32_t kk = gmma_k(type);
  float a_rows[2][32];
  const AccCoord c0 = wgmma_acc_coord(thread_in_warpgroup, 0);
  for (uint32_t h = 0; h < 2; ++h) {
    gmma_load_row(type, ga, false, c0.row + 8 * h, kk, blk.smem, blk.smem_bytes,
                  "wgmma operand A", a_rows[h]);
  }
  float b_col[32];
  uint32_t b_loaded = ~0u;
  for (uint32_t i = 0; i < n / 2; ++i) {
    const AccCoord c = wgmma_acc_coord(thread_in_warpgroup, i);
    if (c.col != b_loaded) {
      gmma_load_row(type, gb, trans_b, c.col, kk, blk.smem, blk.smem_bytes, "wgmma operand B",
                    b_col);
      b_loaded = c.col;
    }
    const float* a = a_rows[c.row == c0.row ? 0 : 1];
    // Each product of two bf16 (8-bit significands) or two e4m3 (4-bit) values is exact in f32.
    float acc = scale_d ? d[i] : 0.0f;
    for (uint32_t k = 0; k < kk; ++k) acc += a[k] * b_col[k];
    d[i] = acc;
  }
}

inline void wgmma_issue(float* d, uint32_t n, GmmaType type, bool trans_b, uint64_t desc_a,
                        uint64_t desc_b, bool scale_d) {
  if (type == GmmaType::kE4m3 && trans_b) fail("wgmma: e4m3 operands have no transpose");
  const uint32_t t = self().tid % 128;
  self().wgmma.add([=] { wgmma_fragment(t, n, type, trans_b, desc_a, desc_b, scale_d, d); });
}

inline void wgmma_commit_group() { self().wgmma.commit(); }
inline void wgmma_wait_group(int n) { self().wgmma.wait(static_cast<size_t>(n)); }

}  // namespace emu
}  // namespace dsv3
