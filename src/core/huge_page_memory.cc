#include "core/huge_page_memory.h"

#include <sys/mman.h>

#include <cstdint>
#include <new>

namespace shardwire {
namespace {

std::size_t RoundUp(std::size_t bytes, std::size_t to) { return (bytes + to - 1) / to * to; }

}  // namespace

void* HugePageMemoryResource::do_allocate(std::size_t bytes, std::size_t alignment) {
  if (bytes < kHugePageBytes || alignment > kHugePageBytes) {
    return std::pmr::new_delete_resource()->allocate(bytes, alignment);
  }
  const std::size_t size = RoundUp(bytes, kHugePageBytes);
  // Map 2 MiB more than needed and unmap the unaligned head and the tail beyond `size`.
  const std::size_t mapped = size + kHugePageBytes;
  void* raw = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const auto base = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t aligned = RoundUp(base, kHugePageBytes);
  if (aligned > base) ::munmap(raw, aligned - base);
  const std::uintptr_t end = base + mapped;
  if (end > aligned + size) ::munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
  (void)::madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);  // best effort
  return reinterpret_cast<void*>(aligned);
}

void HugePageMemoryResource::do_deallocate(void* p, std::size_t bytes, std::size_t alignment) {
  if (bytes < kHugePageBytes || alignment > kHugePageBytes) {
    std::pmr::new_delete_resource()->deallocate(p, bytes, alignment);
    return;
  }
  ::munmap(p, RoundUp(bytes, kHugePageBytes));
}

void AdviseHugePages(void* data, std::size_t bytes) {
  const auto begin = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t first = RoundUp(begin, kHugePageBytes);
  const std::uintptr_t last = (begin + bytes) / kHugePageBytes * kHugePageBytes;
  if (last > first) (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
}

}  // namespace shardwire
