// The functional semantics of every primitive in dsv3/hopper.cuh and dsv3/mma.cuh, for the
// interpreter build (DSV3_EMULATE): each wrapper there calls the function of the same job here.
// The asynchronous ones (copies, wgmma) become Deferreds performed at their completion point;
// the collective ones go through the runtime's warp / block synchronisation, so a lane or warp
// that misses one is reported instead of hanging.
#pragma once

#include <stdint.h>

#include "dsv3/emu/copy_emu.h"
#include "dsv3/emu/mbarrier_emu.h"
#include "dsv3/emu/mma_emu.h"
#include "dsv3/emu/runtime.h"
#include "dsv3/emu/wgmma_emu.h"

namespace dsv3 {
namespace emu {

// elect.sync with membermask 0xffffffff: exactly one lane, the lowest of the mask, is elected
// (PTX ISA "elect.sync": "the leader thread ... is the lowest-numbered active thread").
inline bool elect_one_sync() {
  const std::array<uint64_t, 32> present = warp_exchange(0xFFFFFFFFu, 1, "elect.sync");
  uint32_t leader = 0;
  while (leader < 32 && present[leader] == 0) ++leader;
  return self().lane == leader;
}

// bar.sync / bar.arrive id, threads.
inline void named_barrier_sync(uint32_t id, uint32_t threads) {
  block_barrier(id, threads, true, "bar.sync");
}
inline void named_barrier_arrive(uint32_t id, uint32_t threads) {
  block_barrier(id, threads, false, "bar.arrive");
}

// %dynamic_smem_size.
inline uint32_t dynamic_smem_size() { return block().smem_bytes; }

// setmaxnreg.{inc,dec}.sync.aligned: no register file to resize; the warp-wide rendezvous keeps
// the ".sync.aligned" rule checked (every lane of the warp executes it together).
inline void setmaxnreg(uint32_t regs, bool inc) {
  if (regs < 24 || regs > 256 || regs % 8 != 0) {
    fail(msgf("setmaxnreg: register count %u not a multiple of 8 in [24, 256]", regs));
  }
  warp_sync(0xFFFFFFFFu, inc ? "setmaxnreg.inc.sync.aligned" : "setmaxnreg.dec.sync.aligned");
}

}  // namespace emu
}  // namespace dsv3
