// Emulated mbarrier (PTX ISA "Parallel Synchronization and Communication Instructions: mbarrier").
// The state lives in BlockState::mbarriers, keyed by the barrier's address, not in its 8 bytes:
// that is how a barrier used before mbarrier.init (or after mbarrier.inval) is caught.
//
// Phase rule (PTX ISA "Phase Completion of the mbarrier object"): the current phase completes when
// its pending arrival count is zero AND its tx-count is zero; then the phase number advances and
// the pending count is reset to the init count. try_wait.parity(p) is true once the phase of
// parity p has completed, i.e. when the current (incomplete) phase's parity differs from p.
#pragma once

#include <stdint.h>

#include <utility>
#include <vector>

#include "dsv3/emu/runtime.h"
#include "dsv3/emu/smem_operand.h"

namespace dsv3 {
namespace emu {

// The largest count mbarrier.init accepts (PTX ISA: "count ... in the range [1, 2^20 - 1]").
constexpr uint32_t kMbarMaxCount = (1u << 20) - 1;

inline Mbarrier& mbar_state(const void* bar, const char* op) {
  auto& bars = block().mbarriers;
  auto it = bars.find(bar);
  if (it == bars.end()) {
    fail(
        msgf("%s: mbarrier at shared offset 0x%x used before mbarrier.init (or after "
             "mbarrier.inval)",
             op, shared_addr(bar)));
  }
  return it->second;
}

// Completes the current phase if nothing is missing any more.
inline void mbar_maybe_complete(Mbarrier& m) {
  if (m.pending == 0 && m.tx == 0) {
    m.completed_phases++;
    m.pending = m.expected;
    m.tx = 0;
    note_progress();
  }
}

inline void mbar_init(uint64_t* bar, uint32_t count) {
  smem_operand(bar, 8, 8, "mbarrier.init", false);
  if (count == 0 || count > kMbarMaxCount) {
    fail(msgf("mbarrier.init: count %u outside [1, 2^20 - 1]", count));
  }
  auto& bars = block().mbarriers;
  auto it = bars.find(bar);
  if (it != bars.end() && !it->second.in_flight.empty()) {
    fail(msgf("mbarrier.init at shared offset 0x%x while copies still complete_tx on it",
              shared_addr(bar)));
  }
  Mbarrier m;
  m.expected = count;
  m.pending = count;
  bars[bar] = std::move(m);
  note_progress();
}

// One arrival on the current phase. An arrival with nothing pending is an over-arrival: the
// phase could only be waiting for transaction bytes, and hardware would credit the next phase.
inline void mbar_arrive_n(uint64_t* bar, uint32_t n, const char* op) {
  Mbarrier& m = mbar_state(bar, op);
  if (n > m.pending) {
    fail(
        msgf("%s: over-arrival on mbarrier at shared offset 0x%x (%u arrival(s) with %u "
             "pending, init count %u)",
             op, shared_addr(bar), n, m.pending, m.expected));
  }
  m.pending -= n;
  note_progress();
  mbar_maybe_complete(m);
}

// expect-tx: raises the current phase's tx-count (PTX ISA "tx-count operations").
inline void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  Mbarrier& m = mbar_state(bar, "mbarrier.expect_tx");
  m.tx += bytes;
  note_progress();
}

inline void mbar_arrive(uint64_t* bar) { mbar_arrive_n(bar, 1, "mbarrier.arrive"); }

// arrive.expect_tx = expect-tx then arrive, as one operation (PTX ISA).
inline void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  Mbarrier& m = mbar_state(bar, "mbarrier.arrive.expect_tx");
  m.tx += bytes;
  mbar_arrive_n(bar, 1, "mbarrier.arrive.expect_tx");
}

// complete-tx by an async copy that finished (performed by the copy's Deferred). The tx-count may
// go below zero when the copy completes before its expect-tx was issued; PTX allows either order
// inside a phase, and the phase cannot complete until the count is back at zero.
inline void mbar_complete_tx(const void* bar, uint32_t bytes, const char* op) {
  Mbarrier& m = mbar_state(bar, op);
  m.tx -= bytes;
  note_progress();
  mbar_maybe_complete(m);
}

// Performs every copy in flight against `bar` (each completes its bytes of tx-count). Copies are
// performed as late as possible, when someone first needs them, so a consumer that reads the
// destination before waiting sees the old contents, as it could on the hardware.
inline void mbar_perform_in_flight(const void* bar) {
  for (;;) {
    std::vector<Deferred> ops;
    {
      Mbarrier& m = mbar_state(bar, "mbarrier.try_wait.parity");
      if (m.in_flight.empty()) return;
      ops = std::move(m.in_flight);
      m.in_flight.clear();
    }
    for (auto& op : ops) op();
  }
}

inline bool mbar_phase_done(const void* bar, uint32_t parity) {
  const Mbarrier& m = mbar_state(bar, "mbarrier.try_wait.parity");
  return (m.completed_phases & 1u) != (parity & 1u);
}

// try_wait.parity: true once the phase of parity `parity` has completed. Before answering false
// it lets the in-flight copies land and, if that was not enough, yields to the other fibers once
// (the hardware's "suspended until the time limit" window); the caller loops.
inline bool mbar_try_wait(uint64_t* bar, uint32_t parity) {
  if (mbar_phase_done(bar, parity)) return true;
  mbar_perform_in_flight(bar);
  if (mbar_phase_done(bar, parity)) return true;
  blocked_yield(WaitInfo{"mbarrier.try_wait.parity", bar, parity});
  return mbar_phase_done(bar, parity);
}

// inval: the barrier's 8 bytes become ordinary shared memory again; copies still in flight on it
// would complete_tx on a dead barrier, which is a kernel bug.
inline void mbar_inval(uint64_t* bar) {
  Mbarrier& m = mbar_state(bar, "mbarrier.inval");
  if (!m.in_flight.empty()) {
    fail(msgf("mbarrier.inval at shared offset 0x%x with %zu copies still in flight on it",
              shared_addr(bar), m.in_flight.size()));
  }
  block().mbarriers.erase(bar);
  note_progress();
}

}  // namespace emu
}  // namespace dsv3
