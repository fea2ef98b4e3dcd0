// Smoke test of the interpreter core on small hand-written kernels (compiled as host C++ with
// the interpreter's prelude): block barriers, shuffles, ballots, atomics, dynamic shared memory,
// and the errors a broken kernel must produce instead of a hang or a crash: a deadlock, a warp
// collective some lanes skip, an out-of-bounds global access, a shared-memory overrun, __trap.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>

#include "dsv3/emu/abi.h"

extern "C" __global__ void block_sum(const float* x, float* out, int n) {
  __shared__ float partial[32];
  float v = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
  }
}

extern "C" __global__ void scan_and_ballot(int* out, int* counter) {
  DSV3_DYNAMIC_SMEM(int, buf);
  const int lane = threadIdx.x % 32;
  int inc = lane;
  for (int d = 1; d < 32; d <<= 1) {
    const int o = __shfl_up_sync(0xffffffffu, inc, d);
    if (lane >= d) inc += o;
  }
  buf[threadIdx.x] = inc;
  __syncthreads();
  const unsigned odd = __ballot_sync(0xffffffffu, buf[threadIdx.x] & 1);
  out[threadIdx.x] = static_cast<int>(odd == 0x66666666u);  // inclusive sums 0,1,3,6,10,15,...: odd at lanes 1,2,5,6,...
  atomicAdd(counter, 1);
}

extern "C" __global__ void deadlock_kernel(int*) {
  if (threadIdx.x < 32) __syncthreads();  // warp 1 never arrives and never exits early
  else
    for (;;) __nanosleep(100);
}

extern "C" __global__ void divergent_shuffle(int* out) {
  if (threadIdx.x % 2 == 0) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
  else
    __syncwarp();
}

extern "C" __global__ void oob_read(const float* x, float* out, int n) {
  out[threadIdx.x] = x[threadIdx.x + n];  // reads past the end of x
}

extern "C" __global__ void smem_overrun(int* out) {
  DSV3_DYNAMIC_SMEM(int, s);
  s[threadIdx.x * 1024] = 1;
  out[0] = s[0];
}

extern "C" __global__ void traps(int*) {
  if (blockIdx.x == 2 && threadIdx.x == 5) __trap();
}

extern "C" __global__ void early_exit_barrier(int* out) {
  if (threadIdx.x >= 64) return;  // exited threads do not hold up __syncthreads
  __syncthreads();
  out[threadIdx.x] = 1;
}

extern "C" __global__ void spins_forever(int* flag) {
  // Waits for a flag nobody sets, without any wait point the scheduler could switch at.
  while (*reinterpret_cast<volatile int*>(flag) == 0) {
  }
}

namespace {

template <class... A, size_t... I>
void call(void (*f)(A...), void** args, std::index_sequence<I...>) {
  f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}
template <class... A>
struct Invoke {
  template <void (*F)(A...)>
  static void run(void** args) {
    call(F, args, std::index_sequence_for<A...>{});
  }
};
#define INVOKER(fn) (+[](void** a) { call(&fn, a, std::make_index_sequence<arity(&fn)>{}); })
template <class... A>
constexpr size_t arity(void (*)(A...)) {
  return sizeof...(A);
}

int failures = 0;

void expect(bool ok, const std::string& what) {
  printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

int launch(const char* name, dsv3_emu_invoke_fn fn, unsigned grid, unsigned block, unsigned smem,
           void** args, std::string* err) {
  const uint32_t g[3] = {grid, 1, 1};
  const uint32_t b[3] = {block, 1, 1};
  char buf[4096] = {};
  const int rc = dsv3_emu_launch(name, fn, g, b, smem, args, buf, sizeof buf);
  *err = buf;
  return rc;
}

template <class T>
T* alloc(size_t n) {
  char err[256];
  return static_cast<T*>(dsv3_emu_alloc(n * sizeof(T), err, sizeof err));
}

}  // namespace

int main() {
  std::string err;
  {
    const int n = 1000, blocks = 3;
    float* x = alloc<float>(n * blocks);
    float* out = alloc<float>(blocks);
    double want[blocks] = {};
    for (int i = 0; i < n * blocks; ++i) {
      x[i] = static_cast<float>((i * 37) % 11) - 5.0f;
      want[i / n] += x[i];
    }
    void* args[] = {&x, &out, const_cast<int*>(&n)};
    const int rc = launch("block_sum", INVOKER(block_sum), blocks, 256, 0, args, &err);
    expect(rc == 0 && out[0] == want[0] && out[1] == want[1] && out[2] == want[2],
           "block_sum: shuffles + __syncthreads give the exact sums " + err);
  }
  {
    int* out = alloc<int>(64);
    int* counter = alloc<int>(1);
    void* args[] = {&out, &counter};
    const int rc = launch("scan_and_ballot", INVOKER(scan_and_ballot), 4, 64, 64 * 4, args, &err);
    bool ok = rc == 0 && *counter == 4 * 64;
    for (int i = 0; i < 64; ++i) ok = ok && out[i] == 1;
    expect(ok, "scan_and_ballot: __shfl_up_sync scan, __ballot_sync, atomicAdd " + err);
  }
  {
    int* out = alloc<int>(128);
    void* args[] = {&out};
    int rc = launch("deadlock_kernel", INVOKER(deadlock_kernel), 1, 64, 0, args, &err);
    expect(rc != 0 && err.find("deadlock") != std::string::npos &&
               err.find("__syncthreads on barrier 0: 32 threads arrived, 64 expected") !=
                   std::string::npos,
           "deadlock is reported, naming the barrier:\n" + err);
    rc = launch("divergent_shuffle", INVOKER(divergent_shuffle), 1, 32, 0, args, &err);
    expect(rc != 0 && err.find("warp divergence") != std::string::npos,
           "divergent warp collective is reported:\n" + err);
    rc = launch("early_exit_barrier", INVOKER(early_exit_barrier), 1, 128, 0, args, &err);
    expect(rc == 0 && out[0] == 1 && out[63] == 1, "exited threads do not hold __syncthreads " + err);
    rc = launch("traps", INVOKER(traps), 4, 32, 0, args, &err);
    expect(rc != 0 && err.find("block (2, 0, 0)") != std::string::npos &&
               err.find("__trap") != std::string::npos,
           "__trap names block and thread:\n" + err);
    rc = launch("smem_overrun", INVOKER(smem_overrun), 1, 32, 4096, args, &err);
    expect(rc != 0 && err.find("dynamic shared memory") != std::string::npos,
           "shared-memory overrun is caught:\n" + err);
  }
  {
    const int n = 100;
    float* x = alloc<float>(n);
    float* out = alloc<float>(32);
    void* args[] = {&x, &out, const_cast<int*>(&n)};
    const int rc = launch("oob_read", INVOKER(oob_read), 1, 32, 0, args, &err);
    expect(rc != 0 && err.find("past the end of the 400-byte buffer") != std::string::npos,
           "global out-of-bounds read is caught:\n" + err);
    // The process is still healthy afterwards: a good launch runs.
    float* y = alloc<float>(3000);
    float* o = alloc<float>(3);
    const int m = 1000;
    void* args2[] = {&y, &o, const_cast<int*>(&m)};
    expect(launch("block_sum", INVOKER(block_sum), 3, 128, 0, args2, &err) == 0,
           "a launch after a fault still runs " + err);
  }
  {
    setenv("DSV3_EMU_TIMEOUT_S", "1", 1);
    int* flag = alloc<int>(1);
    void* args[] = {&flag};
    const int rc = launch("spins_forever", INVOKER(spins_forever), 1, 32, 0, args, &err);
    expect(rc != 0 && err.find("time limit") != std::string::npos,
           "an endless loop ends at the time limit:\n" + err);
    unsetenv("DSV3_EMU_TIMEOUT_S");
  }
  printf("%s\n", failures == 0 ? "all passed" : "FAILED");
  return failures == 0 ? 0 : 1;
}
