// Guarded host memory standing in for device memory and shared memory: each region ends at an
// inaccessible page, so an access past its end faults and the fault handler can name the region.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <string>

namespace dsv3 {
namespace emu {

// `bytes` zero-filled bytes, the base aligned to `align` (a power of two <= 4096), the end of the
// rounded-up size touching a PROT_NONE guard page. nullptr when the host is out of memory.
void* guarded_alloc(size_t bytes, size_t align);
void guarded_free(void* p);

// For a faulting address: which guarded region it ran past ("N bytes past the end of the
// 4096-byte allocation at 0x..."), or an empty string if it is near none of them.
std::string describe_address(const void* addr);

}  // namespace emu
}  // namespace dsv3
