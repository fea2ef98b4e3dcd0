// Hopper (sm_90a) primitives shared by every kernel crate: shared-memory addressing, mbarriers,
// proxy fences, cp.async, bulk / TMA copies, wgmma and the shared-memory layouts they agree on.
//
// Everything here is a thin inline-PTX wrapper; each comment names the PTX it emits and the
// ordering rule a caller must respect. In the interpreter build (DSV3_EMULATE, host g++) each
// wrapper's body calls instead the emulated semantics in dsv3/emu/hopper_emu.h.
// wgmma needs the arch-specific target (sm_90a / compute_90a); a translation unit built for any
// other target fails in ptxas, which is intended.
//
// Conventions:
// * "smem address" = a 32-bit address in the CTA's shared window, from smem_u32(). Every PTX
//   operand below that names shared memory takes one of these, never a generic pointer.
// * A shared::cta address is a valid shared::cluster address for the executing CTA, so the
//   ".shared::cluster" destination forms work unchanged in non-cluster launches (a lone CTA is a
//   cluster of one).
// * Every asm statement that touches memory is volatile with a "memory" clobber, so the compiler
//   neither drops it nor moves ordinary loads / stores across it.
#pragma once

#include <cuda.h>  // CUtensorMap
#include <stdint.h>

#ifdef DSV3_EMULATE
#include "dsv3/emu/hopper_emu.h"  // the interpreter build's semantics of every wrapper below
#endif

namespace dsv3 {

// ---------------------------------------------------------------------------------------------
// Shared-memory addressing
// ---------------------------------------------------------------------------------------------

// Generic pointer -> 32-bit shared-window address (cvta.to.shared). The pointer must point into
// shared memory.
__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// Rounds a shared-memory pointer up to kAlign bytes (a power of two) measured in the shared
// window, which is what TMA swizzling and wgmma descriptors look at. Dynamic shared memory is only
// guaranteed 16-byte aligned, so swizzled tiles (1024-byte atoms) must be placed with this.
template <uint32_t kAlign>
__device__ __forceinline__ uint8_t* smem_align_up(uint8_t* ptr) {
  static_assert((kAlign & (kAlign - 1)) == 0, "alignment must be a power of two");
  const uint32_t addr = smem_u32(ptr);
  return ptr + (((addr + kAlign - 1) & ~(kAlign - 1)) - addr);
}

// ---------------------------------------------------------------------------------------------
// mbarrier (64-bit transaction barrier in shared memory, 8-byte aligned)
// ---------------------------------------------------------------------------------------------
// Life cycle: one thread mbar_init()s, then fence_barrier_init() + __syncthreads() (or a cluster
// barrier) before any other thread or the async proxy (TMA / bulk copy) touches the barrier.
// Each phase completes when its pending arrival count reaches zero AND its transaction byte count
// is zero; waiters poll with the parity of the phase they wait for (0, 1, 0, ... per completion).

// mbarrier.init.shared::cta.b64 [bar], count — expected arrivals per phase.
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
#ifdef DSV3_EMULATE
  emu::mbar_init(bar, count);
#else
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count)
               : "memory");
#endif
}

// fence.mbarrier_init.release.cluster — makes prior mbarrier.init visible to other threads and
// the async proxy. Issue once after the inits, by the initialising thread, before the block
// barrier. (Compiles to next to nothing for a non-cluster launch; keep it for cluster launches.)
__device__ __forceinline__ void fence_barrier_init() {
#ifdef DSV3_EMULATE
  // Ordering only: the interpreter runs one fiber at a time.
#else
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}

// mbarrier.arrive.shared::cta.b64 — one arrival (release semantics, CTA scope).
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#ifdef DSV3_EMULATE
  emu::mbar_arrive(bar);
#else
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
#endif
}

// mbarrier.arrive.expect_tx.shared::cta.b64 — one arrival plus `bytes` of expected transaction
// count for the current phase. Issue it (normally by the thread that launches the copies) in the
// same phase as the copies that complete_tx against it; order against the copies does not matter.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#ifdef DSV3_EMULATE
  emu::mbar_arrive_expect_tx(bar, bytes);
#else
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
#endif
}

// mbarrier.expect_tx.relaxed.cta.shared::cta.b64 — adds expected transaction bytes without
// arriving (for a phase whose arrivals come from elsewhere).
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
#ifdef DSV3_EMULATE
  emu::mbar_expect_tx(bar, bytes);
#else
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)),
               "r"(bytes)
               : "memory");
#endif
}

// mbarrier.try_wait.parity.shared::cta.b64 (acquire, CTA scope) — true once the phase with the
// given parity has completed. May return false after a hardware time limit; callers loop.
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, uint32_t parity) {
#ifdef DSV3_EMULATE
  return emu::mbar_try_wait(bar, parity);
#else
  uint32_t done;
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(done)
      : "r"(smem_u32(bar)), "r"(parity)
      : "memory");
  return done != 0;
#endif
}

// Polls of one wait before a bounded-waits build gives up. Each failed try_wait already
// suspends the thread for a hardware time limit, so this is seconds of waiting: far beyond any
// legitimate wait inside one kernel, far below a host-side timeout.
#ifndef DSV3_BOUNDED_WAIT_POLLS
#define DSV3_BOUNDED_WAIT_POLLS (1u << 26)
#endif

// Blocks until the phase with parity `phase` (0 or 1) has completed. Data written by TMA / bulk
// copies that complete_tx on this barrier is visible to the caller afterwards.
//
// `where` names the waiter (kernel and role) for the debug build made with DSV3_BOUNDED_WAITS=1
// in the environment of the cargo build: there a wait that never completes (a missing arrive, an
// expect_tx byte count the copies never reach) prints `where`, the parity and the block / thread,
// then traps, so a protocol error ends the launch with a message naming the kernel instead of
// hanging the device until the host gives up. Debug only: the printf call makes ptxas serialize
// the GEMM's wgmma pipeline (warning C7510), so time nothing with that build.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t phase,
                                          const char* where = "mbar_wait") {
#ifdef DSV3_BOUNDED_WAITS
  uint32_t polls = 0;
  while (!mbar_try_wait(bar, phase & 1u)) {
    if (++polls == DSV3_BOUNDED_WAIT_POLLS) {
      printf("dsv3 bounded wait: %s: mbarrier phase (parity %u) not complete after %u polls, "
             "block (%d, %d, %d) thread %d: trapping\n",
             where, phase & 1u, polls, static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y),
             static_cast<int>(blockIdx.z), static_cast<int>(threadIdx.x));
      __trap();
    }
  }
#else
  (void)where;
  while (!mbar_try_wait(bar, phase & 1u)) {
  }
#endif
}

// mbarrier.inval.shared::cta.b64 — retires the barrier so its 8 bytes may be reused as ordinary
// shared memory. Every thread must be done with it (put a block barrier in front).
__device__ __forceinline__ void mbar_inval(uint64_t* bar) {
#ifdef DSV3_EMULATE
  emu::mbar_inval(bar);
#else
  asm volatile("mbarrier.inval.shared::cta.b64 [%0];" ::"r"(smem_u32(bar)) : "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// Proxy fences
// ---------------------------------------------------------------------------------------------
// Shared memory written with ordinary (generic-proxy) stores is not guaranteed visible to the
// async proxy (wgmma operand reads, TMA / bulk stores reading smem) without this fence. Pattern:
// every writing thread: st.shared ...; fence_proxy_async_shared(); then a block / named barrier;
// then one thread (or the warpgroup) issues the async-proxy consumer.

// fence.proxy.async.shared::cta
__device__ __forceinline__ void fence_proxy_async_shared() {
#ifdef DSV3_EMULATE
  // Ordering only: generic and async proxies see one memory in the interpreter.
#else
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// Same PTX as fence_proxy_async_shared(); the name used at "make my smem writes visible to the
// async view" sites (before a TMA store / wgmma reads what this thread wrote).
__device__ __forceinline__ void fence_view_async_shared() {
#ifdef DSV3_EMULATE
  // Ordering only: generic and async proxies see one memory in the interpreter.
#else
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}

// fence.proxy.async — all state spaces (e.g. global memory written by st.global and then read
// by a TMA load in the same kernel).
__device__ __forceinline__ void fence_proxy_async() {
#ifdef DSV3_EMULATE
  // Ordering only.
#else
  asm volatile("fence.proxy.async;" ::: "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// Ampere-style cp.async (per thread, 16 bytes, L2 only)
// ---------------------------------------------------------------------------------------------

// cp.async.cg.shared.global [dst], [src], 16, src_bytes — copies src_bytes (0..16) and zero-fills
// the rest of the 16 bytes; src_bytes = 0 reads nothing (use it for out-of-range rows, with any
// valid-looking src). dst and src 16-byte aligned. Completion via commit / wait_group below.
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src,
                                            uint32_t src_bytes = 16) {
#ifdef DSV3_EMULATE
  emu::cp_async_16(smem_dst, gmem_src, src_bytes);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(smem_dst)),
               "l"(gmem_src), "r"(src_bytes)
               : "memory");
#endif
}

// cp.async.commit_group — closes the group of this thread's cp.async issued since the last
// commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef DSV3_EMULATE
  emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// cp.async.wait_group N — waits until at most N of this thread's committed groups are pending.
// Only covers the calling thread's copies: follow with __syncthreads() before reading other
// threads' data.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef DSV3_EMULATE
  emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// 1-D bulk copies (TMA engine without a tensor map). Sizes multiple of 16 bytes, addresses
// 16-byte aligned.
// ---------------------------------------------------------------------------------------------

// cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [src], bytes, [bar]
// global -> shared; completes `bytes` of transaction count on `bar` (arm it with
// mbar_arrive_expect_tx / mbar_expect_tx for the same phase).
__device__ __forceinline__ void bulk_copy_g2s(void* smem_dst, const void* gmem_src, uint32_t bytes,
                                              uint64_t* bar) {
#ifdef DSV3_EMULATE
  emu::bulk_copy_g2s(smem_dst, gmem_src, bytes, bar);
#else
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::
          "r"(smem_u32(smem_dst)),
      "l"(gmem_src), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
#endif
}

// cp.async.bulk.global.shared::cta.bulk_group [dst], [src], bytes — shared -> global. The smem
// source written by generic stores needs fence_proxy_async_shared() + a barrier first. Track
// completion with bulk_commit_group() / bulk_wait_group*().
__device__ __forceinline__ void bulk_copy_s2g(void* gmem_dst, const void* smem_src,
                                              uint32_t bytes) {
#ifdef DSV3_EMULATE
  emu::bulk_copy_s2g(gmem_dst, smem_src, bytes);
#else
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(gmem_dst),
               "r"(smem_u32(smem_src)), "r"(bytes)
               : "memory");
#endif
}

// cp.async.bulk.commit_group — closes this thread's bulk_group (bulk and tensor stores).
__device__ __forceinline__ void bulk_commit_group() {
#ifdef DSV3_EMULATE
  emu::bulk_commit_group();
#else
  asm volatile("cp.async.bulk.commit_group;" ::: "memory");
#endif
}

// cp.async.bulk.wait_group N — at most N of this thread's bulk groups pending; the writes of the
// completed ones are done (visible to the executing thread).
template <int N>
__device__ __forceinline__ void bulk_wait_group() {
#ifdef DSV3_EMULATE
  emu::bulk_wait_group(N);
#else
  asm volatile("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// cp.async.bulk.wait_group.read N — weaker: only the shared-memory *reads* of the completed
// groups are done, so their smem may be overwritten; the global writes may still be in flight.
template <int N>
__device__ __forceinline__ void bulk_wait_group_read() {
#ifdef DSV3_EMULATE
  emu::bulk_wait_group(N);  // performs fully: stronger than .read
#else
  asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// TMA tensor copies (tile mode). `tmap` points at a CUtensorMap in param / const / global memory,
// normally a `const __grid_constant__ CUtensorMap` kernel parameter (take its address). Coordinates
// are element indices, innermost dimension first, and may be negative / past the end (out-of-bound
// elements are filled per the map; the transaction count is always the full box size).
// ---------------------------------------------------------------------------------------------

// prefetch.tensormap [tmap] — warms the descriptor cache; optional, one thread, before first use.
__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap* tmap) {
#ifdef DSV3_EMULATE
  (void)tmap;  // a cache hint
#else
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(tmap)) : "memory");
#endif
}

// cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes
// [dst], [tmap, {c0, c1}], [bar] — loads one box. dst aligned to 128 bytes (1024 for
// CU_TENSOR_MAP_SWIZZLE_128B so the swizzle pattern starts at row 0).
__device__ __forceinline__ void tma_load_2d(void* smem_dst, const CUtensorMap* tmap, uint64_t* bar,
                                            int32_t c0, int32_t c1) {
#ifdef DSV3_EMULATE
  const int32_t coord[2] = {c0, c1};
  emu::tma_load(smem_dst, tmap, bar, 2, coord);
#else
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];" ::"r"(smem_u32(smem_dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(smem_u32(bar))
      : "memory");
#endif
}

// cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes
// [dst], [tmap, {c0, c1, c2}], [bar]
__device__ __forceinline__ void tma_load_3d(void* smem_dst, const CUtensorMap* tmap, uint64_t* bar,
                                            int32_t c0, int32_t c1, int32_t c2) {
#ifdef DSV3_EMULATE
  const int32_t coord[3] = {c0, c1, c2};
  emu::tma_load(smem_dst, tmap, bar, 3, coord);
#else
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4}], [%5];" ::"r"(smem_u32(smem_dst)),
      "l"(reinterpret_cast<uint64_t>(tmap)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_u32(bar))
      : "memory");
#endif
}

// cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [tmap, {c0, c1}], [src] — stores one box
// (out-of-bound elements are skipped). Same rules as bulk_copy_s2g: fence_proxy_async_shared() +
// barrier before, bulk_commit_group() / bulk_wait_group*() after.
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* tmap, const void* smem_src,
                                             int32_t c0, int32_t c1) {
#ifdef DSV3_EMULATE
  const int32_t coord[2] = {c0, c1};
  emu::tma_store(tmap, smem_src, 2, coord);
#else
  asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"(
          reinterpret_cast<uint64_t>(tmap)),
      "r"(smem_u32(smem_src)), "r"(c0), "r"(c1)
      : "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// Warp / warpgroup utilities
// ---------------------------------------------------------------------------------------------

// elect.sync — true in exactly one active lane of the (fully active) warp.
__device__ __forceinline__ bool elect_one_sync() {
#ifdef DSV3_EMULATE
  return emu::elect_one_sync();
#else
  uint32_t elected;
  asm volatile(
      "{\n"
      ".reg .b32 r;\n"
      ".reg .pred p;\n"
      "elect.sync r|p, 0xffffffff;\n"
      "selp.u32 %0, 1, 0, p;\n"
      "}\n"
      : "=r"(elected)
      :
      : "memory");
  return elected != 0;
#endif
}

// bar.sync id, threads — named barrier over `threads` threads (multiple of 32). Id 0 is the one
// __syncthreads() uses.
__device__ __forceinline__ void named_barrier_sync(uint32_t id, uint32_t threads) {
#ifdef DSV3_EMULATE
  emu::named_barrier_sync(id, threads);
#else
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
#endif
}

// bar.arrive id, threads — signals named barrier `id` without waiting (the producer side of a
// producer / consumer hand-off between warps; the consumers bar.sync with the same thread count).
__device__ __forceinline__ void named_barrier_arrive(uint32_t id, uint32_t threads) {
#ifdef DSV3_EMULATE
  emu::named_barrier_arrive(id, threads);
#else
  asm volatile("bar.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
#endif
}

// %dynamic_smem_size — bytes of dynamic shared memory this launch was given. Kernels whose layout
// is a compile-time constant check it on entry, so a host-side size mismatch traps instead of
// silently overrunning shared memory.
__device__ __forceinline__ uint32_t dynamic_smem_size() {
#ifdef DSV3_EMULATE
  return emu::dynamic_smem_size();
#else
  uint32_t bytes;
  asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(bytes));
  return bytes;
#endif
}

// setmaxnreg.inc / .dec.sync.aligned.u32 N — warpgroup-wide register reallocation for warp
// specialisation (N multiple of 8 in [24, 256]). All warps of the warpgroup must execute it.
// ptxas honours it only when it knows the entry register count: give the kernel
// __launch_bounds__(threads, 1), otherwise it reports C7508 and ignores the instruction.
template <uint32_t N>
__device__ __forceinline__ void warpgroup_reg_alloc() {
#ifdef DSV3_EMULATE
  emu::setmaxnreg(N, true);
#else
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
#endif
}
template <uint32_t N>
__device__ __forceinline__ void warpgroup_reg_dealloc() {
#ifdef DSV3_EMULATE
  emu::setmaxnreg(N, false);
#else
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
#endif
}

// ---------------------------------------------------------------------------------------------
// wgmma synchronisation
// ---------------------------------------------------------------------------------------------
// Per batch of MMAs: wgmma_fence() (after the accumulator registers were last touched by normal
// code and after the smem operands were published) -> wgmma_*() ... -> wgmma_commit_group() ->
// wgmma_wait_group<N>() before the accumulators are read or the smem operands overwritten. All
// 128 threads of the warpgroup execute these (".sync.aligned": convergent, same call site).

// wgmma.fence.sync.aligned — orders prior register / smem accesses before the following wgmma.
__device__ __forceinline__ void wgmma_fence() {
#ifdef DSV3_EMULATE
  // Ordering only: each thread's wgmma groups are performed in issue order.
#else
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}

// wgmma.commit_group.sync.aligned — closes the group of wgmma issued since the last commit.
__device__ __forceinline__ void wgmma_commit_group() {
#ifdef DSV3_EMULATE
  emu::wgmma_commit_group();
#else
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}

// wgmma.wait_group.sync.aligned N — at most N committed wgmma groups still pending.
template <int N>
__device__ __forceinline__ void wgmma_wait_group() {
#ifdef DSV3_EMULATE
  emu::wgmma_wait_group(N);
#else
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}

// CUTLASS-style names for the same three steps.
__device__ __forceinline__ void warpgroup_arrive() { wgmma_fence(); }
__device__ __forceinline__ void warpgroup_commit_batch() { wgmma_commit_group(); }
template <int N>
__device__ __forceinline__ void warpgroup_wait() {
  wgmma_wait_group<N>();
}

// Empty asm that "reads and writes" an accumulator register: pins it in place so the compiler
// cannot move ordinary uses of it across the wgmma fence / wait (emits no instruction). Apply to
// every accumulator before wgmma_fence() and after wgmma_wait_group().
__device__ __forceinline__ void warpgroup_fence_operand(float& reg) {
#ifdef DSV3_EMULATE
  (void)reg;  // the deferred wgmma writes through a pointer that escaped: nothing is cached
#else
  asm volatile("" : "+f"(reg)::"memory");
#endif
}
template <int N>
__device__ __forceinline__ void warpgroup_fence_operand(float (&regs)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) warpgroup_fence_operand(regs[i]);
}

// ---------------------------------------------------------------------------------------------
// wgmma shared-memory matrix descriptors
// ---------------------------------------------------------------------------------------------
// 64-bit descriptor (PTX ISA "Matrix Descriptor Format"):
//   bits  0-13  start address >> 4
//   bits 16-29  leading dimension byte offset >> 4
//   bits 32-45  stride dimension byte offset >> 4
//   bits 49-51  base offset (0 here: swizzled tiles start 1024-byte aligned — keep them so)
//   bits 62-63  swizzle mode (SmemSwizzle)
// For K-major operands with 128B swizzle (the layout TMA SWIZZLE_128B writes for 128-byte box
// rows): rows are 128 bytes, 8-row atoms of 1024 bytes; stride byte offset = 1024 (next 8 rows),
// leading byte offset unused (pass 16, encodes 1). Stepping K inside the 128-byte row is done by
// adding the byte offset (32 bytes per k16 bf16 / k32 e4m3 step) to the start address: the
// hardware applies the XOR swizzle to the final address, so the same layout function holds.
enum class SmemSwizzle : uint32_t {
  kNone = 0,
  k128B = 1,
  k64B = 2,
  k32B = 3,
};

__host__ __device__ __forceinline__ uint64_t make_smem_desc(uint32_t smem_addr,
                                                           uint32_t leading_byte_offset,
                                                           uint32_t stride_byte_offset,
                                                           SmemSwizzle swizzle) {
  uint64_t desc = 0;
  desc |= static_cast<uint64_t>((smem_addr >> 4) & 0x3FFFu);
  desc |= static_cast<uint64_t>((leading_byte_offset >> 4) & 0x3FFFu) << 16;
  desc |= static_cast<uint64_t>((stride_byte_offset >> 4) & 0x3FFFu) << 32;
  desc |= static_cast<uint64_t>(static_cast<uint32_t>(swizzle) & 0x3u) << 62;
  return desc;
}

// Descriptor of a K-major 128B-swizzled tile (rows of 128 bytes, 1024-byte aligned atoms) whose
// first row starts `smem_addr`; add k-step byte offsets (< 128) to smem_addr.
__device__ __forceinline__ uint64_t make_smem_desc_k_sw128(uint32_t smem_addr) {
  return make_smem_desc(smem_addr, 16, 1024, SmemSwizzle::k128B);
}

// Descriptor of an MN-major (transposed, 16-bit types) 128B-swizzled operand: the tile is stored
// as column blocks of 64 MN-elements (128-byte rows, one row per K index, 8-row / 1024-byte
// atoms); `mn_block_bytes` is the distance between consecutive 64-wide MN column blocks. In the
// PTX ISA's terms (canonical layout ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO))) the leading byte offset
// is that MN block stride and the stride byte offset is the next 8 K rows (1024 bytes). Step K by
// whole 8-row groups: add 1024 bytes per 8 K indices to smem_addr (k16 = 2048 bytes).
__device__ __forceinline__ uint64_t make_smem_desc_mn_sw128(uint32_t smem_addr,
                                                            uint32_t mn_block_bytes) {
  return make_smem_desc(smem_addr, mn_block_bytes, 1024, SmemSwizzle::k128B);
}

// ---------------------------------------------------------------------------------------------
// 128-byte swizzle (CUTLASS Swizzle<3,4,3>, TMA CU_TENSOR_MAP_SWIZZLE_128B)
// ---------------------------------------------------------------------------------------------
// In a tile of 128-byte rows whose base is 1024-byte aligned, logical byte `b` of row `r` lives at
//   r * 128 + (((b / 16) ^ (r % 8)) * 16) + (b % 16)
// i.e. the 16-byte chunk index is XORed with the row index mod 8. Equivalently, on a linear byte
// offset o = r * 128 + b: o ^ (((o >> 7) & 7) << 4).
__host__ __device__ __forceinline__ uint32_t swizzle_128b(uint32_t row, uint32_t byte_in_row) {
  return row * 128u + ((((byte_in_row >> 4) ^ row) & 7u) << 4) + (byte_in_row & 15u);
}

__host__ __device__ __forceinline__ uint32_t swizzle_128b_offset(uint32_t linear_offset) {
  return linear_offset ^ (((linear_offset >> 7) & 7u) << 4);
}

// ---------------------------------------------------------------------------------------------
// wgmma accumulator fragment layout (m64nNk*, f32 accumulators)
// ---------------------------------------------------------------------------------------------
// PTX ISA "Register Fragments" for wgmma .m64nNk16/.m64nNk32, accumulator D (same as CUTLASS
// CLayout_64xN = ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)) on a column-major 64xN tile):
// a thread holds N/2 floats d[0 .. N/2-1]. With t = thread index within the warpgroup (0..127),
// w = t / 32 (warp), lane = t % 32:
//   row(i) = 16*w + lane/4 + 8*((i/2) % 2)
//   col(i) = 8*(i/4) + 2*(lane%4) + (i % 2)
// so d[2j], d[2j+1] are horizontally adjacent (col, col+1) — a float2 store.
__host__ __device__ __forceinline__ int wgmma_acc_row(int t, int i) {
  return 16 * ((t >> 5) & 3) + ((t & 31) >> 2) + 8 * ((i >> 1) & 1);
}
__host__ __device__ __forceinline__ int wgmma_acc_col(int t, int i) {
  return 8 * (i >> 2) + 2 * (t & 3) + (i & 1);
}

// ---------------------------------------------------------------------------------------------
// wgmma MMA (A and B both from shared memory, both K-major; D += A * B, f32 accumulators)
// ---------------------------------------------------------------------------------------------
// D is M=64 x N, A is 64 x K (K-major = row-major), B is N x K (K-major = row-major B^T).
// `accumulate` drives the scale-d predicate: false -> D = A*B (old D ignored), true -> D += A*B.
// Supported N: 16, 32, 64, 128, 256 (add more register lists below when needed).

// Register-list strings "%0, %1, ..." for the accumulator vector operand.
#define DSV3_WG_R8_0 "%0, %1, %2, %3, %4, %5, %6, %7"
#define DSV3_WG_R8_1 "%8, %9, %10, %11, %12, %13, %14, %15"
#define DSV3_WG_R8_2 "%16, %17, %18, %19, %20, %21, %22, %23"
#define DSV3_WG_R8_3 "%24, %25, %26, %27, %28, %29, %30, %31"
#define DSV3_WG_R8_4 "%32, %33, %34, %35, %36, %37, %38, %39"
#define DSV3_WG_R8_5 "%40, %41, %42, %43, %44, %45, %46, %47"
#define DSV3_WG_R8_6 "%48, %49, %50, %51, %52, %53, %54, %55"
#define DSV3_WG_R8_7 "%56, %57, %58, %59, %60, %61, %62, %63"
#define DSV3_WG_R8_8 "%64, %65, %66, %67, %68, %69, %70, %71"
#define DSV3_WG_R8_9 "%72, %73, %74, %75, %76, %77, %78, %79"
#define DSV3_WG_R8_10 "%80, %81, %82, %83, %84, %85, %86, %87"
#define DSV3_WG_R8_11 "%88, %89, %90, %91, %92, %93, %94, %95"
#define DSV3_WG_R8_12 "%96, %97, %98, %99, %100, %101, %102, %103"
#define DSV3_WG_R8_13 "%104, %105, %106, %107, %108, %109, %110, %111"
#define DSV3_WG_R8_14 "%112, %113, %114, %115, %116, %117, %118, %119"
#define DSV3_WG_R8_15 "%120, %121, %122, %123, %124, %125, %126, %127"
#define DSV3_WG_REGS_8 DSV3_WG_R8_0
#define DSV3_WG_REGS_16 DSV3_WG_REGS_8 ", " DSV3_WG_R8_1
#define DSV3_WG_REGS_32 DSV3_WG_REGS_16 ", " DSV3_WG_R8_2 ", " DSV3_WG_R8_3
#define DSV3_WG_REGS_64 \
  DSV3_WG_REGS_32 ", " DSV3_WG_R8_4 ", " DSV3_WG_R8_5 ", " DSV3_WG_R8_6 ", " DSV3_WG_R8_7
#define DSV3_WG_REGS_128                                                                       \
  DSV3_WG_REGS_64 ", " DSV3_WG_R8_8 ", " DSV3_WG_R8_9 ", " DSV3_WG_R8_10 ", " DSV3_WG_R8_11 \
                  ", " DSV3_WG_R8_12 ", " DSV3_WG_R8_13 ", " DSV3_WG_R8_14 ", " DSV3_WG_R8_15

// Matching "+f" operand lists.
#define DSV3_WG_ACC8(d, b)                                                                \
  "+f"(d[(b) + 0]), "+f"(d[(b) + 1]), "+f"(d[(b) + 2]), "+f"(d[(b) + 3]), "+f"(d[(b) + 4]), \
      "+f"(d[(b) + 5]), "+f"(d[(b) + 6]), "+f"(d[(b) + 7])
#define DSV3_WG_ACC16(d, b) DSV3_WG_ACC8(d, b), DSV3_WG_ACC8(d, (b) + 8)
#define DSV3_WG_ACC32(d, b) DSV3_WG_ACC16(d, b), DSV3_WG_ACC16(d, (b) + 16)
#define DSV3_WG_ACC64(d, b) DSV3_WG_ACC32(d, b), DSV3_WG_ACC32(d, (b) + 32)
#define DSV3_WG_ACC128(d, b) DSV3_WG_ACC64(d, b), DSV3_WG_ACC64(d, (b) + 64)

// One SS wgmma: INSTR is the full opcode, REGS the register list, IA / IB / IS the operand numbers
// (as strings) of desc_a, desc_b and scale_d, TAIL the immediate scale / transpose operands.
#define DSV3_WGMMA_SS(INSTR, REGS, IA, IB, IS, TAIL, ...)                                        \
  asm volatile("{\n"                                                                         \
               ".reg .pred p;\n"                                                             \
               "setp.ne.b32 p, %" IS ", 0;\n" INSTR " {" REGS "}, %" IA ", %" IB ", p" TAIL \
               ";\n"                                                                         \
               "}\n"                                                                         \
               : __VA_ARGS__                                                                 \
               : "l"(desc_a), "l"(desc_b), "r"(scale_d))

// wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16 d, desc_a, desc_b, p, 1, 1, 0, tB
// (scale-a = scale-b = +1; A K-major). kTransB = false: B K-major ([N, K] rows); kTransB = true:
// B N-major ([K, N] rows, 16-bit types only), described by make_smem_desc_mn_sw128().
#define DSV3_WGMMA_BF16_ALL_N(TAIL)                                                              \
  if constexpr (N == 16) {                                                                     \
    DSV3_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16", DSV3_WG_REGS_8, "8", \
                  "9", "10", TAIL, DSV3_WG_ACC8(d, 0));                                        \
  } else if constexpr (N == 32) {                                                              \
    DSV3_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16", DSV3_WG_REGS_16,     \
                  "16", "17", "18", TAIL, DSV3_WG_ACC16(d, 0));                                \
  } else if constexpr (N == 64) {                                                              \
    DSV3_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16", DSV3_WG_REGS_32,     \
                  "32", "33", "34", TAIL, DSV3_WG_ACC32(d, 0));                                \
  } else if constexpr (N == 128) {                                                             \
    DSV3_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16", DSV3_WG_REGS_64,    \
                  "64", "65", "66", TAIL, DSV3_WG_ACC64(d, 0));                                \
  } else {                                                                                     \
    DSV3_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16", DSV3_WG_REGS_128,   \
                  "128", "129", "130", TAIL, DSV3_WG_ACC128(d, 0));                            \
  }

template <int N, bool kTransB = false>
__device__ __forceinline__ void wgmma_m64nNk16_bf16(float (&d)[N / 2], uint64_t desc_a,
                                                    uint64_t desc_b, bool accumulate) {
  static_assert(N == 16 || N == 32 || N == 64 || N == 128 || N == 256, "unsupported wgmma N");
#ifdef DSV3_EMULATE
  emu::wgmma_issue(d, N, emu::GmmaType::kBf16, kTransB, desc_a, desc_b, accumulate);
#else
  const uint32_t scale_d = accumulate ? 1u : 0u;
  if constexpr (kTransB) {
    DSV3_WGMMA_BF16_ALL_N(", 1, 1, 0, 1")
  } else {
    DSV3_WGMMA_BF16_ALL_N(", 1, 1, 0, 0")
  }
#endif
}
#undef DSV3_WGMMA_BF16_ALL_N

// wgmma.mma_async.sync.aligned.m64nNk32.f32.e4m3.e4m3 d, desc_a, desc_b, p, 1, 1
// (fp8 wgmma has no transpose operands: both operands are always K-major).
template <int N>
__device__ __forceinline__ void wgmma_m64nNk32_e4m3(float (&d)[N / 2], uint64_t desc_a,
                                                    uint64_t desc_b, bool accumulate) {
  static_assert(N == 16 || N == 32 || N == 64 || N == 128 || N == 256, "unsupported wgmma N");
#ifdef DSV3_EMULATE
  emu::wgmma_issue(d, N, emu::GmmaType::kE4m3, false, desc_a, desc_b, accumulate);
#else
  const uint32_t scale_d = accumulate ? 1u : 0u;
  if constexpr (N == 16) {
    DSV3_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n16k32.f32.e4m3.e4m3", DSV3_WG_REGS_8, "8", "9",
                  "10", ", 1, 1", DSV3_WG_ACC8(d, 0));
  } else if constexpr (N == 32) {
    DSV3_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n32k32.f32.e4m3.e4m3", DSV3_WG_REGS_16, "16",
                  "17", "18", ", 1, 1", DSV3_WG_ACC16(d, 0));
  } else if constexpr (N == 64) {
    DSV3_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3", DSV3_WG_REGS_32, "32",
                  "33", "34", ", 1, 1", DSV3_WG_ACC32(d, 0));
  } else if constexpr (N == 128) {
    DSV3_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3", DSV3_WG_REGS_64, "64",
                  "65", "66", ", 1, 1", DSV3_WG_ACC64(d, 0));
  } else {
    DSV3_WGMMA_SS("wgmma.mma_async.sync.aligned.m64n256k32.f32.e4m3.e4m3", DSV3_WG_REGS_128,
                  "128", "129", "130", ", 1, 1", DSV3_WG_ACC128(d, 0));
  }
#endif
}

#undef DSV3_WGMMA_SS
#undef DSV3_WG_ACC128
#undef DSV3_WG_ACC64
#undef DSV3_WG_ACC32
#undef DSV3_WG_ACC16
#undef DSV3_WG_ACC8
#undef DSV3_WG_REGS_128
#undef DSV3_WG_REGS_64
#undef DSV3_WG_REGS_32
#undef DSV3_WG_REGS_16
#undef DSV3_WG_REGS_8
#undef DSV3_WG_R8_0
#undef DSV3_WG_R8_1
#undef DSV3_WG_R8_2
#undef DSV3_WG_R8_3
#undef DSV3_WG_R8_4
#undef DSV3_WG_R8_5
#undef DSV3_WG_R8_6
#undef DSV3_WG_R8_7
#undef DSV3_WG_R8_8
#undef DSV3_WG_R8_9
#undef DSV3_WG_R8_10
#undef DSV3_WG_R8_11
#undef DSV3_WG_R8_12
#undef DSV3_WG_R8_13
#undef DSV3_WG_R8_14
#undef DSV3_WG_R8_15

// The two shapes the self-tests pin down, by their PTX names.
__device__ __forceinline__ void wgmma_m64n64k16_bf16(float (&d)[32], uint64_t desc_a,
                                                     uint64_t desc_b, bool accumulate) {
  wgmma_m64nNk16_bf16<64>(d, desc_a, desc_b, accumulate);
}
__device__ __forceinline__ void wgmma_m64n64k32_e4m3(float (&d)[32], uint64_t desc_a,
                                                     uint64_t desc_b, bool accumulate) {
  wgmma_m64nNk32_e4m3<64>(d, desc_a, desc_b, accumulate);
}

}  // namespace dsv3
