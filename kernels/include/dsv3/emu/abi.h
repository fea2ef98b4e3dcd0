// The C interface between the Rust emulated device (`kernels::gpu`, feature `emulate`) and the
// kernel interpreter: kernel tables generated per `.cu` by the build script, launches, and the
// guarded allocator that stands in for device memory.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Calls one kernel with a cuLaunchKernel-style argument array: args[i] points at the value of
// parameter i (a pointer, an integer, a float or a CUtensorMap).
typedef void (*dsv3_emu_invoke_fn)(void** args);

typedef struct {
  const char* name;
  dsv3_emu_invoke_fn invoke;
} dsv3_emu_kernel;

// Every kernel of one `.cu` file. The build script generates, per file,
//   const dsv3_emu_module* dsv3_emu_module_<crate>_<stem>(void);
typedef struct {
  const char* file;
  const dsv3_emu_kernel* kernels;
  size_t count;
} dsv3_emu_module;

// Runs `kernel` over the whole grid on the calling OS thread and returns when every block has
// finished. Returns 0 on success; otherwise writes a NUL-terminated message (what went wrong, in
// which kernel, block and thread: a deadlock, an out-of-bounds access, a __trap, a misuse of a
// primitive) into err[0..err_cap) and returns non-zero. Never hangs: a deadlock is an error.
int dsv3_emu_launch(const char* kernel_name, dsv3_emu_invoke_fn invoke, const uint32_t grid[3],
                    const uint32_t block[3], uint32_t dynamic_smem_bytes, void** args, char* err,
                    size_t err_cap);

// Device memory: `bytes` zero-filled bytes whose end touches an inaccessible guard page, so a read
// or write past the end faults and the launch reports it (with the allocation it overran).
// The base is 16-byte aligned. Returns NULL (and a message in err) when the host is out of memory.
void* dsv3_emu_alloc(size_t bytes, char* err, size_t err_cap);
void dsv3_emu_free(void* ptr);

#ifdef __cplusplus
}
#endif
