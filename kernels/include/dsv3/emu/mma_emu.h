// Emulated mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA "Matrix Fragments for
// mma.m16n8k16 with floating point type"): a warp collective in which every lane contributes its
// A (4 x b32) and B (2 x b32) fragment words and gets back its 4 C values.
#pragma once

#include <stdint.h>

#include <array>

#include "dsv3/emu/runtime.h"
#include "dsv3/emu/wgmma_emu.h"  // bf16_bits_to_float

namespace dsv3 {
namespace emu {

// Fragment tables, with groupID = lane / 4 and threadID_in_group = lane % 4. Each b32 register
// packs two bf16, the lower-indexed element in the low half.
//   A (16 x 16, row): a0,a1 -> reg 0, a2,a3 -> reg 1, a4,a5 -> reg 2, a6,a7 -> reg 3;
//     row = groupID (+8 for a2,a3,a6,a7), col = 2 * threadID_in_group + (i & 1) (+8 for a4..a7).
//   B (16 x 8, col): b0,b1 -> reg 0, b2,b3 -> reg 1;
//     row (k) = 2 * threadID_in_group + (i & 1) (+8 for b2,b3), col (n) = groupID.
//   C / D (16 x 8): c0..c3; row = groupID (+8 for c2,c3), col = 2 * threadID_in_group + (i & 1).
struct MmaCoord {
  uint32_t row, col;
};

inline MmaCoord mma16816_a_coord(uint32_t lane, uint32_t i) {
  return {lane / 4 + ((i / 2) % 2) * 8, 2 * (lane % 4) + (i % 2) + (i / 4) * 8};
}
inline MmaCoord mma16816_b_coord(uint32_t lane, uint32_t i) {  // (k, n)
  return {2 * (lane % 4) + (i % 2) + (i / 2) * 8, lane / 4};
}
inline MmaCoord mma16816_c_coord(uint32_t lane, uint32_t i) {
  return {lane / 4 + (i / 2) * 8, 2 * (lane % 4) + (i % 2)};
}

// Element i of a fragment whose registers are `regs` (two bf16 per register).
inline float mma_frag_elem(const uint32_t* regs, uint32_t i) {
  const uint32_t r = regs[i / 2];
  return bf16_bits_to_float(static_cast<uint16_t>(i % 2 ? r >> 16 : r & 0xFFFF));
}

// The lane's C += A * B from every lane's fragment words. Products exact, summed in f32 in k order.
inline void mma16816_lane(uint32_t lane, const uint32_t (*a)[4], const uint32_t (*b)[2], float* c) {
  float am[16][16], bm[16][8];
  for (uint32_t l = 0; l < 32; ++l) {
    for (uint32_t i = 0; i < 8; ++i) {
      const MmaCoord p = mma16816_a_coord(l, i);
      am[p.row][p.col] = mma_frag_elem(a[l], i);
    }
    for (uint32_t i = 0; i < 4; ++i) {
      const MmaCoord p = mma16816_b_coord(l, i);
      bm[p.row][p.col] = mma_frag_elem(b[l], i);
    }
  }
  for (uint32_t i = 0; i < 4; ++i) {
    const MmaCoord p = mma16816_c_coord(lane, i);
    float acc = c[i];
    for (uint32_t k = 0; k < 16; ++k) {
      acc += static_cast<float>(static_cast<double>(am[p.row][k]) * bm[k][p.col]);
    }
    c[i] = acc;
  }
}

// The collective: three exchanges (a0|a1, a2|a3, b0|b1) over the full warp (.sync.aligned).
inline void mma_m16n8k16_bf16(float* c, const uint32_t* a, const uint32_t* b) {
  const char* op = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32";
  const auto pack = [](uint32_t lo, uint32_t hi) { return lo | (static_cast<uint64_t>(hi) << 32); };
  const std::array<uint64_t, 32> x0 = warp_exchange(0xFFFFFFFFu, pack(a[0], a[1]), op);
  const std::array<uint64_t, 32> x1 = warp_exchange(0xFFFFFFFFu, pack(a[2], a[3]), op);
  const std::array<uint64_t, 32> x2 = warp_exchange(0xFFFFFFFFu, pack(b[0], b[1]), op);
  uint32_t aw[32][4], bw[32][2];
  for (uint32_t l = 0; l < 32; ++l) {
    aw[l][0] = static_cast<uint32_t>(x0[l]);
    aw[l][1] = static_cast<uint32_t>(x0[l] >> 32);
    aw[l][2] = static_cast<uint32_t>(x1[l]);
    aw[l][3] = static_cast<uint32_t>(x1[l] >> 32);
    bw[l][0] = static_cast<uint32_t>(x2[l]);
    bw[l][1] = static_cast<uint32_t>(x2[l] >> 32);
  }
  mma16816_lane(self().lane, aw, bw, c);
}

}  // namespace emu
}  // namespace dsv3
