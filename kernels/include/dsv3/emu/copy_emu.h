// Emulated asynchronous copies: cp.async (Ampere, per thread), 1-D bulk copies and TMA tensor
// tile copies (PTX ISA "Data Movement and Conversion Instructions: cp.async",
// "cp.async.bulk", "cp.async.bulk.tensor"). Every copy is a Deferred: performed at its completion
// point (wait_group, or the mbarrier wait that needs its complete_tx), never at issue.
#pragma once

#include <stdint.h>
#include <string.h>

#include "dsv3/emu/mbarrier_emu.h"
#include "dsv3/emu/runtime.h"
#include "dsv3/emu/smem_operand.h"
#include "dsv3/emu/tensor_map.h"

namespace dsv3 {
namespace emu {

// ---- cp.async.cg.shared.global [dst], [src], 16, src_bytes ----------------------------------
// Copies src_bytes (0..16) and zero-fills the rest of the 16 bytes; with src_bytes = 0 the source
// is not read at all. Both addresses 16-byte aligned (cp-size 16). Static __shared__ destinations
// are legal (routing.cu's gate GEMM uses one).
inline void cp_async_16(void* smem_dst, const void* gmem_src, uint32_t src_bytes) {
  uint8_t* dst = smem_operand(smem_dst, 16, 16, "cp.async.cg.shared.global (destination)", false);
  if (src_bytes > 16) fail(msgf("cp.async.cg.shared.global: src-size %u > cp-size 16", src_bytes));
  if (src_bytes != 0) check_global_align(gmem_src, 16, "cp.async.cg.shared.global (source)");
  const uint8_t* src = static_cast<const uint8_t*>(gmem_src);
  self().cp_async.add([dst, src, src_bytes] {
    if (src_bytes) memcpy(dst, src, src_bytes);
    memset(dst + src_bytes, 0, 16 - src_bytes);
  });
}

inline void cp_async_commit() { self().cp_async.commit(); }
inline void cp_async_wait(int n) { self().cp_async.wait(static_cast<size_t>(n)); }

// ---- 1-D bulk copies -------------------------------------------------------------------------
// PTX ISA cp.async.bulk: size a multiple of 16, both addresses 16-byte aligned.
inline void check_bulk(const void* gmem, uint32_t bytes, const char* what) {
  if (bytes == 0 || bytes % 16 != 0)
    fail(msgf("%s: size %u is not a positive multiple of 16", what, bytes));
  check_global_align(gmem, 16, what);
}

// global -> shared, complete_tx(bytes) on `bar` when done.
inline void bulk_copy_g2s(void* smem_dst, const void* gmem_src, uint32_t bytes, uint64_t* bar) {
  const char* what = "cp.async.bulk.shared::cluster.global";
  check_bulk(gmem_src, bytes, what);
  uint8_t* dst = smem_operand(smem_dst, bytes, 16, what, false);
  Mbarrier& m = mbar_state(bar, what);
  const uint8_t* src = static_cast<const uint8_t*>(gmem_src);
  m.in_flight.push_back([dst, src, bytes, bar, what] {
    memcpy(dst, src, bytes);
    mbar_complete_tx(bar, bytes, what);
  });
  note_progress();
}

// shared -> global, tracked by this thread's bulk groups.
inline void bulk_copy_s2g(void* gmem_dst, const void* smem_src, uint32_t bytes) {
  const char* what = "cp.async.bulk.global.shared::cta";
  check_bulk(gmem_dst, bytes, what);
  const uint8_t* src = smem_operand(smem_src, bytes, 16, what, false);
  uint8_t* dst = static_cast<uint8_t*>(gmem_dst);
  self().bulk.add([dst, src, bytes] { memcpy(dst, src, bytes); });
}

inline void bulk_commit_group() { self().bulk.commit(); }
// wait_group and wait_group.read both perform the groups (the interpreter has no separate "smem
// read done, global write pending" state; performing fully is the stronger of the two).
inline void bulk_wait_group(int n) { self().bulk.wait(static_cast<size_t>(n)); }

// ---- TMA tensor tile copies ------------------------------------------------------------------
// One box, as the tensor map describes it: element (i0, i1, i2) of the box (innermost first) sits
// at global coordinates (c0 + i0, c1 + i1, c2 + i2) and at byte offset
// ((i2 * box1 + i1) * box0 + i0) * elem_bytes from the shared destination, before the swizzle.
// The swizzle is applied to the resulting shared *address* (swizzle_addr), which is why a swizzled
// box must start on the pattern's repeat boundary for the layout to be the textbook one.
struct TmaBox {
  EmuTensorMap map;
  int32_t coord[3];
  uint32_t rank;
  uint32_t box_bytes;
};

inline TmaBox tma_decode(const void* tmap, uint32_t rank, const int32_t* coord, const char* what) {
  TmaBox b;
  memcpy(&b.map, tmap, sizeof b.map);
  const EmuTensorMap& m = b.map;
  if (m.magic != kTensorMapMagic) {
    fail(
        msgf("%s: the tensor map is not an emulated CUtensorMap (magic 0x%08x); it must come "
             "from the emulated device's tensor-map encoder",
             what, m.magic));
  }
  if (m.rank != rank)
    fail(msgf("%s: tensor map of rank %u used by a %uD copy", what, m.rank, rank));
  if (m.elem_bytes != 1 && m.elem_bytes != 2 && m.elem_bytes != 4 && m.elem_bytes != 8) {
    fail(msgf("%s: tensor map element size %u", what, m.elem_bytes));
  }
  const uint32_t sw = m.swizzle_bytes;
  if (sw != 0 && sw != 32 && sw != 64 && sw != 128) fail(msgf("%s: swizzle of %u bytes", what, sw));
  uint64_t n = m.elem_bytes;
  for (uint32_t d = 0; d < rank; ++d) {
    if (m.box[d] == 0 || m.box[d] > 256)
      fail(msgf("%s: box extent %u in dim %u", what, m.box[d], d));
    n *= m.box[d];
  }
  const uint32_t inner = m.box[0] * m.elem_bytes;
  // cuTensorMapEncodeTiled: the inner box extent in bytes is a multiple of 16, and with a swizzle
  // at most the swizzle span.
  if (inner % 16 != 0)
    fail(msgf("%s: inner box row of %u bytes is not a multiple of 16", what, inner));
  if (sw != 0 && inner > sw) {
    fail(msgf("%s: inner box row of %u bytes exceeds the %u-byte swizzle span", what, inner, sw));
  }
  // cuTensorMapEncodeTiled: a 16-byte aligned global address and strides multiple of 16 bytes.
  if (m.global_address % 16 != 0)
    fail(msgf("%s: global address 0x%llx not 16-byte aligned", what,
              (unsigned long long)m.global_address));
  for (uint32_t d = 1; d < rank; ++d) {
    if (m.strides_bytes[d] % 16 != 0) {
      fail(msgf("%s: global stride of dim %u (%llu bytes) not a multiple of 16", what, d,
                (unsigned long long)m.strides_bytes[d]));
    }
  }
  b.rank = rank;
  b.box_bytes = static_cast<uint32_t>(n);
  for (uint32_t d = 0; d < 3; ++d) b.coord[d] = d < rank ? coord[d] : 0;
  return b;
}

// Required shared alignment of a box: 128 bytes (PTX ISA cp.async.bulk.tensor), and the whole
// swizzle repeat (1024 bytes) for 128B swizzle, as the kernels' comments and CUTLASS assume.
inline uint32_t tma_smem_align(const EmuTensorMap& m) {
  return m.swizzle_bytes == 128 ? 1024 : 128;
}

// Calls f(global element pointer or nullptr when out of bounds, shared byte address of the element)
// for every element of the box.
template <class F>
inline void tma_for_each(const TmaBox& b, uint32_t smem_addr, F f) {
  const EmuTensorMap& m = b.map;
  const uint32_t eb = m.elem_bytes;
  const uint32_t box1 = b.rank > 1 ? m.box[1] : 1, box2 = b.rank > 2 ? m.box[2] : 1;
  for (uint32_t i2 = 0; i2 < box2; ++i2) {
    for (uint32_t i1 = 0; i1 < box1; ++i1) {
      for (uint32_t i0 = 0; i0 < m.box[0]; ++i0) {
        const uint32_t idx[3] = {i0, i1, i2};
        bool in = true;
        uint64_t off = 0;
        for (uint32_t d = 0; d < b.rank; ++d) {
          const int64_t g = static_cast<int64_t>(b.coord[d]) + idx[d];
          if (g < 0 || static_cast<uint64_t>(g) >= m.dims[d]) {
            in = false;
            break;
          }
          off += static_cast<uint64_t>(g) * (d == 0 ? eb : m.strides_bytes[d]);
        }
        const uint32_t lin = ((i2 * box1 + i1) * m.box[0] + i0) * eb;
        const uint32_t addr = swizzle_addr(smem_addr + lin, m.swizzle_bytes);
        uint8_t* g = in ? reinterpret_cast<uint8_t*>(m.global_address) + off : nullptr;
        f(g, addr);
      }
    }
  }
}

// cp.async.bulk.tensor.{2d,3d}.shared::cluster.global.tile.mbarrier::complete_tx::bytes.
// Out-of-bound elements are zero-filled; the tx-count completed is always the full box.
inline void tma_load(void* smem_dst, const void* tmap, uint64_t* bar, uint32_t rank,
                     const int32_t* coord) {
  const char* what =
      rank == 2 ? "cp.async.bulk.tensor.2d (load)" : "cp.async.bulk.tensor.3d (load)";
  const TmaBox b = tma_decode(tmap, rank, coord, what);
  smem_operand(smem_dst, b.box_bytes, tma_smem_align(b.map), what, b.map.swizzle_bytes != 0);
  const uint32_t addr = shared_addr(smem_dst);
  Mbarrier& m = mbar_state(bar, what);
  if (is_static_shared_addr(addr)) {
    // Unswizzled into a static __shared__ buffer: plain offsets from its pointer.
    uint8_t* base = static_cast<uint8_t*>(smem_dst);
    m.in_flight.push_back([b, base, bar, what] {
      tma_for_each(b, 0, [&](const uint8_t* g, uint32_t a) {
        if (g)
          memcpy(base + a, g, b.map.elem_bytes);
        else
          memset(base + a, 0, b.map.elem_bytes);
      });
      mbar_complete_tx(bar, b.box_bytes, what);
    });
  } else {
    m.in_flight.push_back([b, addr, bar, what] {
      tma_for_each(b, addr, [&](const uint8_t* g, uint32_t a) {
        uint8_t* s = shared_ptr(a, b.map.elem_bytes, what);
        if (g)
          memcpy(s, g, b.map.elem_bytes);
        else
          memset(s, 0, b.map.elem_bytes);
      });
      mbar_complete_tx(bar, b.box_bytes, what);
    });
  }
  note_progress();
}

// cp.async.bulk.tensor.2d.global.shared::cta.bulk_group: out-of-bound elements are not written.
inline void tma_store(const void* tmap, const void* smem_src, uint32_t rank, const int32_t* coord) {
  const char* what = "cp.async.bulk.tensor.2d (store)";
  const TmaBox b = tma_decode(tmap, rank, coord, what);
  smem_operand(smem_src, b.box_bytes, tma_smem_align(b.map), what, true);
  const uint32_t addr = shared_addr(smem_src);
  self().bulk.add([b, addr, what] {
    tma_for_each(b, addr, [&](uint8_t* g, uint32_t a) {
      if (g) memcpy(g, shared_ptr(a, b.map.elem_bytes, what), b.map.elem_bytes);
    });
  });
}

}  // namespace emu
}  // namespace dsv3
