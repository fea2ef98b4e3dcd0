// A single-threaded stand-in for the interpreter's runtime (runtime.h), just enough to unit-test
// the emulated Hopper primitives on the host: one block whose dynamic shared memory is a test
// arena, one current thread whose identity the test sets, and failures thrown as exceptions so a
// test can expect them. Waiting is never possible with one thread, so blocked_yield() throws too.
#pragma once

#include <stdint.h>

#include <stdexcept>
#include <string>

#include "dsv3/emu/runtime.h"

namespace fake {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Sets the block's dynamic shared memory and an optional "static __shared__" region.
void set_smem(uint8_t* base, uint32_t bytes);
void set_static_smem(uint8_t* base, uint32_t bytes);
// Sets the current thread (tid, and lane / warp from it); its async groups are cleared.
void set_thread(uint32_t tid);
// Resets the block's mbarriers.
void reset_block();

}  // namespace fake
