#include "memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <mutex>

namespace dsv3 {
namespace emu {
namespace {

struct Region {
  uint8_t* map_start;
  size_t map_bytes;
  size_t bytes;  // what was asked for
};

std::mutex& regions_mutex() {
  static std::mutex m;
  return m;
}

// Keyed by the base address handed out.
std::map<uintptr_t, Region>& regions() {
  static std::map<uintptr_t, Region> r;
  return r;
}

size_t page_bytes() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

}  // namespace

void* guarded_alloc(size_t bytes, size_t align) {
  const size_t page = page_bytes();
  const size_t rounded = (bytes == 0 ? align : (bytes + align - 1) & ~(align - 1));
  const size_t data_pages = (rounded + page - 1) / page;
  const size_t map_bytes = (data_pages + 1) * page;
  void* p = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  uint8_t* start = static_cast<uint8_t*>(p);
  uint8_t* guard = start + data_pages * page;
  mprotect(guard, page, PROT_NONE);
  uint8_t* base = guard - rounded;
  std::lock_guard<std::mutex> lock(regions_mutex());
  regions()[reinterpret_cast<uintptr_t>(base)] = Region{start, map_bytes, bytes};
  return base;
}

void guarded_free(void* p) {
  if (p == nullptr) return;
  Region r;
  {
    std::lock_guard<std::mutex> lock(regions_mutex());
    auto it = regions().find(reinterpret_cast<uintptr_t>(p));
    if (it == regions().end()) return;
    r = it->second;
    regions().erase(it);
  }
  munmap(r.map_start, r.map_bytes);
}

std::string describe_address(const void* addr) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  std::lock_guard<std::mutex> lock(regions_mutex());
  auto it = regions().upper_bound(a);
  if (it == regions().begin()) return "";
  --it;
  const uintptr_t base = it->first;
  const Region& r = it->second;
  const uintptr_t map_end = reinterpret_cast<uintptr_t>(r.map_start) + r.map_bytes;
  if (a >= map_end) return "";
  char buf[160];
  snprintf(buf, sizeof buf, "%zu bytes past the end of the %zu-byte buffer at 0x%zx",
           static_cast<size_t>(a - base - r.bytes), r.bytes, static_cast<size_t>(base));
  return buf;
}

}  // namespace emu
}  // namespace dsv3
