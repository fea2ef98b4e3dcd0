// The kernel interpreter's core: launches, the per-block fiber scheduler with deadlock detection,
// warp collectives, block barriers, the shared-memory window and the fault handler that turns an
// out-of-bounds access into an error naming the kernel, block, thread and buffer.
#include "dsv3/emu/runtime.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "dsv3/emu/abi.h"
#include "fiber.h"
#include "memory.h"

namespace dsv3 {
namespace emu {
namespace {

constexpr uint32_t kMaxThreads = 1024;
constexpr uint32_t kNumBarriers = 16;
constexpr uint32_t kFullMask = 0xffffffffu;

struct BarrierState {
  uint32_t arrived = 0;
  uint32_t threads = 0;  // the count named by the arrivals of this generation (0 = all)
  uint64_t generation = 0;
};

// One warp's exchange slots, double-buffered by collective parity: a lane can only reuse a
// buffer two collectives later, after every lane has published the collective in between, which
// each does only after reading this one.
struct WarpState {
  uint64_t values[2][32] = {};
  const char* ops[2][32] = {};
  uint64_t published[32] = {};  // collectives each lane has published (its collective_seq)
};

// Everything one OS thread needs to run blocks of a launch.
struct Runner {
  const char* kernel = "";
  dsv3_emu_invoke_fn invoke = nullptr;
  void** args = nullptr;
  Dim grid{1, 1, 1};
  Dim block_dim{1, 1, 1};
  uint32_t smem_bytes = 0;
  uint8_t* smem = nullptr;

  BlockState block;
  std::vector<ThreadState> threads;
  std::vector<Context> fibers;
  std::vector<WarpState> warps;
  BarrierState bars[kNumBarriers];
  Context scheduler;
  uint32_t current = 0;
  uint32_t live = 0;
  uint64_t progress = 0;
  bool in_fiber = false;
  bool failed = false;
  std::string error;
};

thread_local Runner* t_runner = nullptr;
thread_local StackPool t_stacks;

Runner& runner() { return *t_runner; }

std::string thread_name(const Runner& r, uint32_t tid) {
  const Dim& d = r.block_dim;
  return msgf("thread (%u, %u, %u) [warp %u lane %u]", tid % d.x, (tid / d.x) % d.y,
                tid / (d.x * d.y), tid / 32, tid % 32);
}

std::string block_name(const Runner& r) {
  const Dim& b = r.block.block_idx;
  return msgf("block (%u, %u, %u)", b.x, b.y, b.z);
}

// Leaves the current fiber for the scheduler. `forever`: the fiber is finished (or failed) and
// will not be resumed.
void to_scheduler(Runner& r) {
  r.in_fiber = false;
  switch_context(&r.fibers[r.current], &r.scheduler);
  r.in_fiber = true;
}

void release_if_complete(Runner& r, BarrierState& b) {
  const uint32_t need = b.threads == 0 ? r.live : b.threads;
  if (b.arrived > 0 && b.arrived >= need) {
    b.arrived = 0;
    b.threads = 0;
    b.generation++;
    note_progress();
  }
}

void thread_exit(Runner& r) {
  ThreadState& t = r.threads[r.current];
  // A wgmma still pending would write its accumulators into the frame that just returned: on
  // the GPU, registers the exited thread no longer has. A kernel must wait for its wgmma.
  if (!t.wgmma.idle()) {
    fail(msgf("thread exited with %zu wgmma group(s) not waited for (wgmma.wait_group)",
                t.wgmma.committed.size() + (t.wgmma.open.empty() ? 0 : 1)));
  }
  // Bulk / TMA stores still in flight complete on their own after the thread exits.
  t.bulk.drain();
  t.exited = true;
  r.live--;
  note_progress();
  // Exited threads no longer count toward __syncthreads()-style barriers.
  for (BarrierState& b : r.bars) {
    if (b.threads == 0) release_if_complete(r, b);
  }
  to_scheduler(r);
  __builtin_unreachable();
}

void fiber_main(void* arg) {
  Runner& r = *static_cast<Runner*>(arg);
  r.invoke(r.args);
  thread_exit(r);
}

std::string describe_wait(const Runner& r, const ThreadState& t) {
  const WaitInfo& w = t.wait;
  std::string s = w.op != nullptr ? w.op : "(unknown wait)";
  if (w.obj == nullptr) return s;
  auto mb = r.block.mbarriers.find(w.obj);
  if (mb != r.block.mbarriers.end()) {
    const Mbarrier& m = mb->second;
    const uint8_t* p = static_cast<const uint8_t*>(w.obj);
    std::string where = (p >= r.smem && p < r.smem + r.smem_bytes)
                            ? msgf("shared 0x%x", static_cast<unsigned>(p - r.smem))
                            : msgf("static shared %p", w.obj);
    return s + msgf(" on the mbarrier at %s for parity %llu; it is in phase %llu (parity %llu) "
                      "with %u of %u arrivals and %lld transaction bytes outstanding, %zu copies "
                      "in flight",
                      where.c_str(), static_cast<unsigned long long>(w.arg),
                      static_cast<unsigned long long>(m.completed_phases),
                      static_cast<unsigned long long>(m.completed_phases & 1), m.pending,
                      m.expected, static_cast<long long>(m.tx), m.in_flight.size());
  }
  for (uint32_t id = 0; id < kNumBarriers; ++id) {
    if (w.obj == &r.bars[id]) {
      const BarrierState& b = r.bars[id];
      return s + msgf(" on barrier %u: %u threads arrived, %u expected", id, b.arrived,
                        b.threads == 0 ? r.live : b.threads);
    }
  }
  return s;
}

std::string deadlock_report(const Runner& r) {
  std::string s = msgf("deadlock in kernel %s, %s: every live thread waits and none can proceed",
                         r.kernel, block_name(r).c_str());
  const uint32_t n = static_cast<uint32_t>(r.threads.size());
  for (uint32_t w0 = 0; w0 < n; w0 += 32) {
    // One line per run of consecutive lanes in the same state.
    uint32_t l = w0;
    const uint32_t end = std::min(n, w0 + 32);
    while (l < end) {
      const ThreadState& t = r.threads[l];
      const std::string what = t.exited ? "exited" : t.waiting ? describe_wait(r, t) : "runnable";
      uint32_t m = l + 1;
      while (m < end) {
        const ThreadState& u = r.threads[m];
        const std::string other =
            u.exited ? "exited" : u.waiting ? describe_wait(r, u) : "runnable";
        if (other != what) break;
        ++m;
      }
      s += msgf("\n  warp %u lanes %u-%u: ", w0 / 32, l - w0, m - 1 - w0) + what;
      l = m;
    }
  }
  return s;
}

// Runs one block to completion (or failure) on this OS thread.
void run_block(Runner& r, Dim block_idx) {
  const uint32_t n = r.block_dim.x * r.block_dim.y * r.block_dim.z;
  r.block = BlockState{};
  r.block.kernel = r.kernel;
  r.block.block_idx = block_idx;
  r.block.block_dim = r.block_dim;
  r.block.grid_dim = r.grid;
  r.block.num_threads = n;
  r.block.smem = r.smem;
  r.block.smem_bytes = r.smem_bytes;
  // Fresh shared memory holds whatever the previous block left; poison it so that reading
  // shared memory nobody wrote gives NaN (0xff bytes) rather than a plausible zero.
  if (r.smem_bytes > 0) memset(r.smem, 0xff, r.smem_bytes);
  r.threads.clear();
  r.threads.resize(n);
  r.warps.assign((n + 31) / 32, WarpState{});
  for (BarrierState& b : r.bars) b = BarrierState{};
  r.fibers.assign(n, Context{});
  for (uint32_t i = 0; i < n; ++i) {
    ThreadState& t = r.threads[i];
    t.thread_idx = Dim{i % r.block_dim.x, (i / r.block_dim.x) % r.block_dim.y,
                       i / (r.block_dim.x * r.block_dim.y)};
    t.tid = i;
    t.lane = i % 32;
    t.warp = i / 32;
    make_context(&r.fibers[i], t_stacks.stack(i), StackPool::kStackBytes, &fiber_main, &r);
  }
  r.live = n;
  for (;;) {
    bool ran = false;
    for (uint32_t i = 0; i < n; ++i) {
      ThreadState& t = r.threads[i];
      if (t.exited) continue;
      // A waiting thread is only worth resuming once something changed since it last looked.
      if (t.waiting && t.progress_seen == r.progress) continue;
      r.current = i;
      r.in_fiber = true;
      switch_context(&r.scheduler, &r.fibers[i]);
      r.in_fiber = false;
      ran = true;
      if (r.failed) return;
    }
    if (r.live == 0) break;
    if (!ran) {
      r.failed = true;
      r.error = deadlock_report(r);
      return;
    }
  }
  // A copy into shared memory still in flight when the block ends would land in shared memory
  // that the next block on the SM may already own: a kernel must consume what it loads.
  for (const auto& [addr, bar] : r.block.mbarriers) {
    if (!bar.in_flight.empty()) {
      r.failed = true;
      r.error = msgf("kernel %s, %s: the block ended with %zu copies still in flight on the "
                       "mbarrier at shared 0x%x (loaded but never waited for)",
                       r.kernel, block_name(r).c_str(), bar.in_flight.size(),
                       shared_addr(addr));
      return;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Faults: an access past a guarded buffer (or a fiber's stack) inside a kernel ends the launch
// with a message; any other fault goes to the handler that was installed before ours.
// ---------------------------------------------------------------------------------------------
struct sigaction g_old_segv;
struct sigaction g_old_bus;

void chain(int sig, siginfo_t* info, void* uctx) {
  const struct sigaction& old = sig == SIGBUS ? g_old_bus : g_old_segv;
  if ((old.sa_flags & SA_SIGINFO) != 0 && old.sa_sigaction != nullptr) {
    old.sa_sigaction(sig, info, uctx);
    return;
  }
  if (old.sa_handler == SIG_IGN || old.sa_handler == SIG_DFL) {
    // Restore the default action and return: the access faults again and the process dies
    // with the usual signal, as it would have without us.
    signal(sig, SIG_DFL);
    return;
  }
  old.sa_handler(sig);
}

void on_fault(int sig, siginfo_t* info, void* uctx) {
  Runner* r = t_runner;
  if (r == nullptr || !r->in_fiber) {
    chain(sig, info, uctx);
    return;
  }
  const void* addr = info->si_addr;
  std::string what;
  if (t_stacks.is_guard(addr)) {
    what = msgf("stack overflow (fiber stacks are %zu KiB)", StackPool::kStackBytes / 1024);
  } else {
    const std::string region = describe_address(addr);
    what = region.empty() ? msgf("invalid memory access at %p", addr)
                          : msgf("out-of-bounds access at %p, %s", addr, region.c_str());
    if (!region.empty() && r->smem != nullptr && static_cast<const uint8_t*>(addr) >= r->smem &&
        static_cast<const uint8_t*>(addr) <= r->smem + r->smem_bytes + 4096) {
      what += msgf(" (dynamic shared memory, %u bytes)", r->smem_bytes);
    }
  }
  r->failed = true;
  r->error = msgf("kernel %s, %s, %s: %s", r->kernel, block_name(*r).c_str(),
                    thread_name(*r, r->current).c_str(), what.c_str());
  // Abandon the faulting fiber (SA_NODEFER: the signal is not left blocked).
  to_scheduler(*r);
  __builtin_unreachable();
}

// The watchdog: a launch that runs longer than DSV3_EMU_TIMEOUT_S (default 600) seconds is
// interrupted with a signal, and a thread caught inside a kernel ends the launch with an error.
// This is what turns a kernel that spins forever without reaching a wait point (a loop on a
// flag another thread should set, say) into an error instead of a hang.
const int kWatchdogSignal = SIGRTMIN + 3;

void on_watchdog(int, siginfo_t*, void*) {
  Runner* r = t_runner;
  if (r == nullptr || !r->in_fiber) return;  // between fibers: the scheduler checks the flag
  r->failed = true;
  r->error = msgf("kernel %s, %s, %s: still running after the interpreter's time limit "
                    "(DSV3_EMU_TIMEOUT_S); a loop that never reaches a wait point?",
                    r->kernel, block_name(*r).c_str(), thread_name(*r, r->current).c_str());
  to_scheduler(*r);
  __builtin_unreachable();
}

double timeout_seconds() {
  const char* env = getenv("DSV3_EMU_TIMEOUT_S");
  const double v = env != nullptr ? strtod(env, nullptr) : 0.0;
  return v > 0.0 ? v : 600.0;
}

void install_fault_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = &on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
    sigaction(SIGBUS, &sa, &g_old_bus);
    struct sigaction wd;
    memset(&wd, 0, sizeof wd);
    wd.sa_sigaction = &on_watchdog;
    wd.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&wd.sa_mask);
    sigaction(kWatchdogSignal, &wd, nullptr);
  });
  // The handler needs a stack of its own when a fiber overflows its stack. Rust gives the
  // threads it starts one; add one where there is none.
  thread_local bool have_altstack = false;
  if (!have_altstack) {
    stack_t cur;
    if (sigaltstack(nullptr, &cur) == 0 && (cur.ss_flags & SS_DISABLE) != 0) {
      static thread_local std::vector<uint8_t> alt(256 * 1024);
      stack_t ss;
      ss.ss_sp = alt.data();
      ss.ss_size = alt.size();
      ss.ss_flags = 0;
      sigaltstack(&ss, nullptr);
    }
    have_altstack = true;
  }
}

void write_error(const std::string& msg, char* err, size_t cap) {
  if (err == nullptr || cap == 0) return;
  const size_t n = std::min(msg.size(), cap - 1);
  memcpy(err, msg.data(), n);
  err[n] = '\0';
}

uint32_t worker_count(uint64_t blocks) {
  const char* env = getenv("DSV3_EMU_THREADS");
  uint64_t w = 1;
  if (env != nullptr) {
    const long v = strtol(env, nullptr, 10);
    w = v > 0 ? static_cast<uint64_t>(v) : std::max(1u, std::thread::hardware_concurrency());
  }
  return static_cast<uint32_t>(std::min<uint64_t>(w, std::max<uint64_t>(blocks, 1)));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The runtime interface (runtime.h)
// ---------------------------------------------------------------------------------------------
ThreadState& self() { return runner().threads[runner().current]; }
BlockState& block() { return runner().block; }
bool in_kernel() { return t_runner != nullptr && t_runner->in_fiber; }

void note_progress() { runner().progress++; }

void blocked_yield(const WaitInfo& info) {
  Runner& r = runner();
  ThreadState& t = r.threads[r.current];
  t.waiting = true;
  t.wait = info;
  t.progress_seen = r.progress;
  to_scheduler(r);
  t.waiting = false;
}

void fail(const std::string& what) {
  Runner* r = t_runner;
  if (r == nullptr || !r->in_fiber) {
    fprintf(stderr, "dsv3 kernel interpreter: %s (outside a kernel)\n", what.c_str());
    abort();
  }
  r->failed = true;
  r->error = msgf("kernel %s, %s, %s: ", r->kernel, block_name(*r).c_str(),
                    thread_name(*r, r->current).c_str()) +
             what;
  to_scheduler(*r);
  __builtin_unreachable();
}

uint32_t shared_addr(const void* p) {
  const Runner& r = runner();
  const uint8_t* b = static_cast<const uint8_t*>(p);
  if (b >= r.smem && b <= r.smem + r.smem_bytes) return static_cast<uint32_t>(b - r.smem);
  // A static __shared__ variable: tagged, so that a primitive decoding it as a dynamic-smem
  // operand refuses it instead of touching the wrong bytes.
  return 0x80000000u | static_cast<uint32_t>(reinterpret_cast<uintptr_t>(p) & 0x7fffffffu);
}

uint8_t* shared_ptr(uint32_t addr, size_t bytes, const char* what) {
  const Runner& r = runner();
  if ((addr & 0x80000000u) != 0 || static_cast<uint64_t>(addr) + bytes > r.smem_bytes) {
    fail(msgf("%s: shared address 0x%x (+%zu bytes) is outside the %u bytes of dynamic shared "
                "memory",
                what, addr, bytes, r.smem_bytes));
  }
  return r.smem + addr;
}

bool is_dynamic_shared(const void* p, size_t bytes) {
  const Runner& r = runner();
  const uint8_t* b = static_cast<const uint8_t*>(p);
  return b >= r.smem && b + bytes <= r.smem + r.smem_bytes;
}

std::array<uint64_t, 32> warp_exchange(uint32_t mask, uint64_t value, const char* op) {
  Runner& r = runner();
  ThreadState& t = r.threads[r.current];
  if (mask != kFullMask) {
    fail(msgf("%s with mask 0x%08x: the interpreter supports only full-warp collectives", op,
                mask));
  }
  WarpState& w = r.warps[t.warp];
  const uint64_t g = t.collective_seq++;
  const int buf = static_cast<int>(g & 1);
  w.values[buf][t.lane] = value;
  w.ops[buf][t.lane] = op;
  w.published[t.lane] = g + 1;
  note_progress();
  const uint32_t first = t.warp * 32;
  wait_until(
      [&] {
        for (uint32_t l = 0; l < 32; ++l) {
          if (w.published[l] > g) continue;
          if (first + l >= r.threads.size()) {
            fail(msgf("%s: warp %u has no lane %u (the block has %zu threads), but the mask "
                        "names every lane",
                        op, t.warp, l, r.threads.size()));
          }
          if (r.threads[first + l].exited) {
            fail(msgf("%s: lane %u of warp %u exited before reaching this warp collective", op,
                        l, t.warp));
          }
          return false;
        }
        return true;
      },
      WaitInfo{op, nullptr, g});
  std::array<uint64_t, 32> out{};
  for (uint32_t l = 0; l < 32; ++l) {
    if (w.ops[buf][l] != op && strcmp(w.ops[buf][l], op) != 0) {
      fail(msgf("warp divergence: lane %u is in %s while lane %u is in %s (collective #%llu "
                  "of the warp)",
                  t.lane, op, l, w.ops[buf][l], static_cast<unsigned long long>(g)));
    }
    out[l] = w.values[buf][l];
  }
  return out;
}

void warp_sync(uint32_t mask, const char* op) { warp_exchange(mask, 0, op); }

void block_barrier(uint32_t id, uint32_t threads, bool wait, const char* op) {
  Runner& r = runner();
  if (id >= kNumBarriers) fail(msgf("%s: barrier id %u (there are 16)", op, id));
  if (threads % 32 != 0) {
    fail(msgf("%s: barrier %u with %u threads (must be a multiple of 32)", op, id, threads));
  }
  if (threads > r.block.num_threads) {
    fail(msgf("%s: barrier %u with %u threads in a block of %u", op, id, threads,
                r.block.num_threads));
  }
  BarrierState& b = r.bars[id];
  if (b.arrived == 0) {
    b.threads = threads;
  } else if (b.threads != threads) {
    fail(msgf("%s: barrier %u used with %u threads while %u threads already arrived "
                "expecting %u",
                op, id, threads, b.arrived, b.threads));
  }
  b.arrived++;
  note_progress();
  const uint64_t gen = b.generation;
  release_if_complete(r, b);
  if (!wait) return;
  wait_until([&] { return b.generation != gen; }, WaitInfo{op, &b, id});
}

}  // namespace emu
}  // namespace dsv3

// ---------------------------------------------------------------------------------------------
// The C interface (abi.h)
// ---------------------------------------------------------------------------------------------
using dsv3::emu::Dim;

namespace {

struct LaunchShared {
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::string error;
};

void run_blocks(const char* name, dsv3_emu_invoke_fn invoke, Dim grid, Dim block,
                uint32_t smem_bytes, void** args, uint64_t first, uint64_t stride,
                LaunchShared& shared) {
  using namespace dsv3::emu;
  install_fault_handlers();
  const uint32_t n = block.x * block.y * block.z;
  Runner r;
  r.kernel = name;
  r.invoke = invoke;
  r.args = args;
  r.grid = grid;
  r.block_dim = block;
  r.smem_bytes = smem_bytes;
  auto record = [&](const std::string& msg) {
    std::lock_guard<std::mutex> lock(shared.mutex);
    if (!shared.failed.exchange(true)) shared.error = msg;
  };
  if (!t_stacks.reserve(n)) {
    record(msgf("kernel %s: out of host memory for %u fiber stacks", name, n));
    return;
  }
  // 16-byte aligned, ending at a guard page: an overrun of dynamic shared memory faults.
  r.smem = static_cast<uint8_t*>(guarded_alloc(std::max(smem_bytes, 16u), 16));
  if (r.smem == nullptr) {
    record(msgf("kernel %s: out of host memory for %u bytes of shared memory", name,
                  smem_bytes));
    return;
  }
  Runner* previous = t_runner;
  t_runner = &r;
  const uint64_t total = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  for (uint64_t i = first; i < total && !shared.failed.load(); i += stride) {
    const Dim idx{static_cast<uint32_t>(i % grid.x), static_cast<uint32_t>((i / grid.x) % grid.y),
                  static_cast<uint32_t>(i / (static_cast<uint64_t>(grid.x) * grid.y))};
    run_block(r, idx);
    if (r.failed) {
      record(r.error);
      break;
    }
  }
  t_runner = previous;
  guarded_free(r.smem);
}

}  // namespace

extern "C" int dsv3_emu_launch(const char* kernel_name, dsv3_emu_invoke_fn invoke,
                               const uint32_t grid[3], const uint32_t block[3],
                               uint32_t dynamic_smem_bytes, void** args, char* err,
                               size_t err_cap) {
  using namespace dsv3::emu;
  const Dim g{grid[0], grid[1], grid[2]};
  const Dim b{block[0], block[1], block[2]};
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  if (g.x == 0 || g.y == 0 || g.z == 0 || threads == 0 || threads > kMaxThreads) {
    write_error(msgf("kernel %s: invalid launch: grid (%u, %u, %u), block (%u, %u, %u)",
                       kernel_name, g.x, g.y, g.z, b.x, b.y, b.z),
                err, err_cap);
    return 1;
  }
  if (t_runner != nullptr && t_runner->in_fiber) {
    write_error(msgf("kernel %s launched from inside a kernel", kernel_name), err, err_cap);
    return 1;
  }
  LaunchShared shared;
  const uint64_t total = static_cast<uint64_t>(g.x) * g.y * g.z;
  const uint32_t workers = worker_count(total);
  install_fault_handlers();
  std::vector<pthread_t> runners{pthread_self()};
  std::mutex runners_mutex;
  std::vector<std::thread> pool;
  for (uint32_t w = 1; w < workers; ++w) {
    pool.emplace_back([&, w] {
      {
        std::lock_guard<std::mutex> lock(runners_mutex);
        runners.push_back(pthread_self());
      }
      run_blocks(kernel_name, invoke, g, b, dynamic_smem_bytes, args, w, workers, shared);
      std::lock_guard<std::mutex> lock(runners_mutex);  // no signal to a thread that is gone
      runners.erase(std::find(runners.begin(), runners.end(), pthread_self()));
    });
  }
  std::mutex done_mutex;
  std::condition_variable done_cv;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(done_mutex);
    const auto limit = std::chrono::duration<double>(timeout_seconds());
    if (done_cv.wait_for(lock, limit, [&] { return done; })) return;
    std::lock_guard<std::mutex> rl(runners_mutex);
    for (pthread_t t : runners) pthread_kill(t, kWatchdogSignal);
  });
  run_blocks(kernel_name, invoke, g, b, dynamic_smem_bytes, args, 0, workers, shared);
  for (auto& t : pool) t.join();
  {
    std::lock_guard<std::mutex> lock(done_mutex);
    done = true;
  }
  done_cv.notify_all();
  watchdog.join();
  if (shared.failed.load()) {
    write_error(shared.error, err, err_cap);
    return 1;
  }
  return 0;
}

extern "C" void* dsv3_emu_alloc(size_t bytes, char* err, size_t err_cap) {
  void* p = dsv3::emu::guarded_alloc(bytes, 16);
  if (p == nullptr) {
    dsv3::emu::write_error(dsv3::emu::msgf("out of host memory allocating %zu bytes", bytes),
                           err, err_cap);
  }
  return p;
}

extern "C" void dsv3_emu_free(void* ptr) { dsv3::emu::guarded_free(ptr); }
