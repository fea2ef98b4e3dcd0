// Fiber context switch (x86-64 System V) and the guarded stack pool.
#include "fiber.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__)
#error "the kernel interpreter's fibers are written for x86-64"
#endif

// switch_context(from, to): push the callee-saved registers and the SSE / x87 control words,
// store rsp in from->sp, load rsp from to->sp, pop the same, return into the resumed fiber.
asm(R"(
  .text
  .p2align 4
  .globl dsv3_emu_switch_context
  .type dsv3_emu_switch_context, @function
dsv3_emu_switch_context:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq (%rsi), %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size dsv3_emu_switch_context, .-dsv3_emu_switch_context

  .p2align 4
  .globl dsv3_emu_fiber_start
  .type dsv3_emu_fiber_start, @function
dsv3_emu_fiber_start:
  movq %r12, %rdi
  callq *%rbx
  ud2
  .size dsv3_emu_fiber_start, .-dsv3_emu_fiber_start
)");

extern "C" void dsv3_emu_switch_context(void* from, const void* to);
extern "C" void dsv3_emu_fiber_start();

namespace dsv3 {
namespace emu {

void switch_context(Context* from, const Context* to) { dsv3_emu_switch_context(from, to); }

void make_context(Context* ctx, void* stack, size_t bytes, void (*entry)(void*), void* arg) {
  // After the switch pops the 64-byte frame below and returns into dsv3_emu_fiber_start, rsp
  // must be 16-byte aligned so that its call leaves the callee with the ABI's alignment.
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t{15};
  top -= 16;
  uint64_t* frame = reinterpret_cast<uint64_t*>(top - 64);
  uint32_t csr[2];
  asm volatile("stmxcsr %0" : "=m"(csr[0]));
  asm volatile("fnstcw %0" : "=m"(csr[1]));
  memcpy(&frame[0], csr, 8);                                       // mxcsr, x87 control word
  frame[1] = 0;                                                    // r15
  frame[2] = 0;                                                    // r14
  frame[3] = 0;                                                    // r13
  frame[4] = reinterpret_cast<uint64_t>(arg);                      // r12: entry's argument
  frame[5] = reinterpret_cast<uint64_t>(entry);                    // rbx: the entry point
  frame[6] = 0;                                                    // rbp
  frame[7] = reinterpret_cast<uint64_t>(&dsv3_emu_fiber_start);    // return address
  ctx->sp = frame;
}

namespace {
size_t page_bytes() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
}  // namespace

StackPool::~StackPool() {
  if (base_ != nullptr) munmap(base_, count_ * slot_bytes_);
}

bool StackPool::reserve(size_t count) {
  if (count <= count_) return true;
  if (base_ != nullptr) munmap(base_, count_ * slot_bytes_);
  base_ = nullptr;
  count_ = 0;
  slot_bytes_ = kStackBytes + page_bytes();
  void* p = mmap(nullptr, count * slot_bytes_, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return false;
  base_ = static_cast<uint8_t*>(p);
  count_ = count;
  for (size_t i = 0; i < count; ++i) mprotect(base_ + i * slot_bytes_, page_bytes(), PROT_NONE);
  return true;
}

void* StackPool::stack(size_t i) const { return base_ + i * slot_bytes_ + page_bytes(); }

bool StackPool::is_guard(const void* addr) const {
  const uint8_t* a = static_cast<const uint8_t*>(addr);
  if (base_ == nullptr || a < base_ || a >= base_ + count_ * slot_bytes_) return false;
  return static_cast<size_t>(a - base_) % slot_bytes_ < page_bytes();
}

}  // namespace emu
}  // namespace dsv3
