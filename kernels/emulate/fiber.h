// Fibers for the kernel interpreter: one per CUDA thread, each on its own guarded stack, switched
// cooperatively. Written by hand (a few lines of assembly) rather than with ucontext because
// swapcontext makes a signal-mask system call on every switch, and a block of 384 threads
// switches millions of times per launch; no maintained crate or library offers fibers to C++.
#pragma once

#include <stddef.h>
#include <stdint.h>

namespace dsv3 {
namespace emu {

// A saved execution context: the stack pointer of a suspended fiber (its callee-saved registers
// and FPU control words are on its stack).
struct Context {
  void* sp = nullptr;
};

// Saves the running context into `from` and resumes `to`.
void switch_context(Context* from, const Context* to);

// Prepares `ctx` so that switching to it runs entry(arg) on the stack [stack, stack + bytes).
// entry must never return (it switches away for the last time instead).
void make_context(Context* ctx, void* stack, size_t bytes, void (*entry)(void*), void* arg);

// A pool of fiber stacks for one OS thread: `count` stacks of `bytes` each, every one with an
// inaccessible guard page below it (a stack overflow faults instead of corrupting a neighbour).
class StackPool {
 public:
  StackPool() = default;
  StackPool(const StackPool&) = delete;
  StackPool& operator=(const StackPool&) = delete;
  ~StackPool();

  // Makes room for at least `count` stacks; returns false when the host is out of memory.
  bool reserve(size_t count);
  void* stack(size_t i) const;  // lowest usable address of stack i
  static constexpr size_t kStackBytes = 256 * 1024;
  // Whether `addr` lies in one of the guard pages (a fiber overflowed its stack).
  bool is_guard(const void* addr) const;

 private:
  uint8_t* base_ = nullptr;
  size_t count_ = 0;
  size_t slot_bytes_ = 0;
};

}  // namespace emu
}  // namespace dsv3
