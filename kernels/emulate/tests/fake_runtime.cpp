// See fake_runtime.h.
#include "fake_runtime.h"

#include <stdio.h>

namespace {

dsv3::emu::ThreadState g_thread;
dsv3::emu::BlockState g_block;
uint8_t* g_static = nullptr;
uint32_t g_static_bytes = 0;

bool inside(const void* p, size_t bytes, const uint8_t* base, uint32_t size) {
  const uint8_t* q = static_cast<const uint8_t*>(p);
  return base && q >= base && q + bytes <= base + size;
}

}  // namespace

namespace fake {

void set_smem(uint8_t* base, uint32_t bytes) {
  g_block.smem = base;
  g_block.smem_bytes = bytes;
}
void set_static_smem(uint8_t* base, uint32_t bytes) {
  g_static = base;
  g_static_bytes = bytes;
}
void set_thread(uint32_t tid) {
  g_thread = dsv3::emu::ThreadState{};
  g_thread.tid = tid;
  g_thread.lane = tid % 32;
  g_thread.warp = tid / 32;
  g_thread.thread_idx = {tid, 0, 0};
}
void reset_block() { g_block.mbarriers.clear(); }

}  // namespace fake

namespace dsv3 {
namespace emu {

ThreadState& self() { return g_thread; }
BlockState& block() { return g_block; }
bool in_kernel() { return true; }
void note_progress() {}
void blocked_yield(const WaitInfo& info) {
  throw fake::Failure(std::string("would block in ") + (info.op ? info.op : "?"));
}
void fail(const std::string& what) { throw fake::Failure(what); }

uint32_t shared_addr(const void* p) {
  if (inside(p, 1, g_block.smem, g_block.smem_bytes)) {
    return static_cast<uint32_t>(static_cast<const uint8_t*>(p) - g_block.smem);
  }
  if (inside(p, 1, g_static, g_static_bytes)) {
    return 0x80000000u | static_cast<uint32_t>(static_cast<const uint8_t*>(p) - g_static);
  }
  throw fake::Failure("cvta.to.shared of a pointer outside shared memory");
}
uint8_t* shared_ptr(uint32_t addr, size_t bytes, const char* what) {
  if ((addr & 0x80000000u) || static_cast<uint64_t>(addr) + bytes > g_block.smem_bytes) {
    char buf[160];
    snprintf(buf, sizeof buf, "%s: shared range [0x%x, +%zu) outside dynamic shared memory", what,
             addr, bytes);
    throw fake::Failure(buf);
  }
  return g_block.smem + addr;
}
bool is_dynamic_shared(const void* p, size_t bytes) {
  return inside(p, bytes, g_block.smem, g_block.smem_bytes);
}
// One thread stands for the whole warp: every lane reports the caller's value.
std::array<uint64_t, 32> warp_exchange(uint32_t mask, uint64_t value, const char*) {
  std::array<uint64_t, 32> r{};
  for (int l = 0; l < 32; ++l) r[l] = (mask >> l) & 1 ? value : 0;
  return r;
}
void warp_sync(uint32_t, const char*) {}
void block_barrier(uint32_t, uint32_t, bool, const char*) {}

}  // namespace emu
}  // namespace dsv3
