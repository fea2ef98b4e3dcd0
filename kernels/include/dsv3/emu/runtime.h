// The kernel interpreter's core, as the emulated CUDA built-ins (cuda_emu.h) and the emulated
// Hopper primitives (hopper_emu.h) see it.
//
// Execution model: a launch runs its blocks one after another on the calling OS thread. Inside a
// block every CUDA thread is a fiber with its own stack; fibers are switched cooperatively, only
// at barriers, warp collectives and spin-waits (wait points). A fiber that waits for a condition
// calls blocked_yield() in a loop; every primitive that changes synchronisation state calls
// note_progress(). When every live fiber of the block is waiting and no progress was noted since
// each of them last checked, the block is deadlocked: the launch fails with a report of what each
// warp waits on. Nothing here is thread-safe across fibers because fibers never run concurrently.
#pragma once

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include <array>
#include <deque>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace dsv3 {
namespace emu {

struct Dim {
  uint32_t x, y, z;
};

// An operation of the async proxy (cp.async, a bulk / TMA copy, a wgmma), issued by one thread
// and performed later, at its completion point. Performing it late (not at issue) is what makes
// a consumer that reads before waiting see stale data, as it could on the hardware.
using Deferred = std::function<void()>;

// Per-thread commit groups of one async mechanism (cp.async groups, bulk groups, wgmma groups).
struct AsyncGroups {
  std::vector<Deferred> open;                    // issued since the last commit
  std::deque<std::vector<Deferred>> committed;   // oldest first

  void add(Deferred d) { open.push_back(std::move(d)); }
  // Closes the open group (an empty commit is a group too, as in PTX).
  void commit() {
    committed.push_back(std::move(open));
    open.clear();
  }
  // Performs every committed group but the newest `n`, oldest first.
  void wait(size_t n) {
    while (committed.size() > n) {
      std::vector<Deferred> g = std::move(committed.front());
      committed.pop_front();
      for (auto& d : g) d();
    }
  }
  // Performs everything, open group included (end of the thread).
  void drain() {
    commit();
    wait(0);
  }
  bool idle() const { return open.empty() && committed.empty(); }
};

// An mbarrier's state, kept beside shared memory (keyed by its address) rather than in its 8
// bytes, so that a barrier used before mbarrier.init is caught.
struct Mbarrier {
  uint32_t expected = 0;          // arrivals per phase (the init count)
  uint32_t pending = 0;           // arrivals still missing in the current phase
  int64_t tx = 0;                 // transaction bytes still expected (may dip below 0 transiently)
  uint64_t completed_phases = 0;  // the current phase's parity is completed_phases & 1
  std::vector<Deferred> in_flight;  // copies that complete_tx on this barrier, not yet performed
};

// What a waiting fiber waits on, for the deadlock report.
struct WaitInfo {
  const char* op = nullptr;   // e.g. "mbarrier.try_wait.parity", "bar.sync", "__shfl_xor_sync"
  const void* obj = nullptr;  // the barrier / mbarrier address, if any
  uint64_t arg = 0;           // parity, barrier id, ...
};

struct ThreadState {
  Dim thread_idx{0, 0, 0};
  uint32_t tid = 0;   // linear thread index in the block
  uint32_t lane = 0;  // tid % 32
  uint32_t warp = 0;  // tid / 32
  AsyncGroups cp_async;  // cp.async commit groups
  AsyncGroups bulk;      // bulk / TMA store groups (bulk_group)
  AsyncGroups wgmma;     // wgmma groups
  // Internal to the runtime:
  uint64_t collective_seq = 0;  // how many warp collectives this lane has entered
  bool exited = false;
  bool waiting = false;
  uint64_t progress_seen = 0;
  WaitInfo wait;
};

struct BlockState {
  const char* kernel = "";
  Dim block_idx{0, 0, 0};
  Dim block_dim{0, 0, 0};
  Dim grid_dim{0, 0, 0};
  uint32_t num_threads = 0;
  uint8_t* smem = nullptr;  // dynamic shared memory (the shared window starts here: address 0)
  uint32_t smem_bytes = 0;
  std::unordered_map<const void*, Mbarrier> mbarriers;
};

// The running fiber's thread and its block. Valid only inside a kernel.
ThreadState& self();
BlockState& block();
bool in_kernel();

// Records that synchronisation state changed (an arrival, a completed copy, a published value):
// waiting fibers must re-check before a deadlock can be declared.
void note_progress();

// Lets the other fibers run; the caller is waiting (for `info`) and will re-check its condition.
void blocked_yield(const WaitInfo& info);

// Waits until pred() holds.
template <class Pred>
inline void wait_until(Pred pred, const WaitInfo& info) {
  while (!pred()) blocked_yield(info);
}

// A printf-style message (for fail() and the runtime's own reports): what was misused and with
// which values.
inline std::string msgf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string msgf(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}

// Ends the launch with an error naming the kernel, the block and the calling thread.
[[noreturn]] void fail(const std::string& what);

// cvta.to.shared: a generic pointer into dynamic shared memory -> its 32-bit shared address (the
// offset from the window's start). Pointers to static __shared__ variables get a tagged address
// (bit 31 set) that the emulated primitives refuse where PTX wants a dynamic-smem operand.
uint32_t shared_addr(const void* p);
// The generic pointer of `bytes` bytes at shared address `addr`; fails (naming `what`) unless the
// whole range lies inside this block's dynamic shared memory.
uint8_t* shared_ptr(uint32_t addr, size_t bytes, const char* what);
// Whether [p, p + bytes) lies in this block's dynamic shared memory.
bool is_dynamic_shared(const void* p, size_t bytes);

// Warp collectives. Every lane named in `mask` must call the same collective (same `op`); the
// call returns once all of them have. warp_exchange returns every lane's `value` (lanes outside
// `mask` read as 0). A lane that exited, or a lane of the mask that calls a different
// collective, is reported as an error.
std::array<uint64_t, 32> warp_exchange(uint32_t mask, uint64_t value, const char* op);
void warp_sync(uint32_t mask, const char* op);

// bar.sync / bar.arrive on barrier `id` (0..15) over `threads` threads (0 = every non-exited
// thread of the block, the __syncthreads() form). `wait` = false is bar.arrive.
void block_barrier(uint32_t id, uint32_t threads, bool wait, const char* op);

}  // namespace emu
}  // namespace dsv3
