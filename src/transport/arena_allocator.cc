#include "shardwire/arena_allocator.h"

#include <fmt/format.h>

namespace shardwire {

ArenaAllocator::ArenaAllocator(std::uint64_t capacity) : capacity_(capacity) {
  if (capacity > 0) free_.emplace(0, capacity);
}

Result<std::uint64_t> ArenaAllocator::Allocate(std::uint64_t bytes, std::uint64_t alignment) {
  if (bytes == 0) return InvalidArgument("ArenaAllocator::Allocate: 0 bytes");
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    return InvalidArgument(fmt::format("ArenaAllocator::Allocate: alignment {} is not a power of two", alignment));
  std::uint64_t largest = 0;
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    const std::uint64_t start = it->first;
    const std::uint64_t end = start + it->second;
    largest = std::max(largest, it->second);
    const std::uint64_t aligned = (start + alignment - 1) & ~(alignment - 1);
    if (aligned < start || aligned > end || bytes > end - aligned) continue;
    free_.erase(it);
    if (aligned + bytes < end) free_.emplace(aligned + bytes, end - (aligned + bytes));
    used_.emplace(aligned, Extent{start, aligned + bytes, bytes});
    in_use_ += bytes;
    return aligned;
  }
  return NotFound(fmt::format("ArenaAllocator::Allocate: no free range holds {} bytes aligned to {} (capacity {}, "
                              "in use {}, largest free range {})",
                              bytes, alignment, capacity_, in_use_, largest));
}

Status ArenaAllocator::Free(std::uint64_t offset) {
  auto u = used_.find(offset);
  if (u == used_.end()) return NotFound(fmt::format("ArenaAllocator::Free: no allocation starts at offset {}", offset));
  std::uint64_t start = u->second.begin;
  std::uint64_t end = u->second.end;
  in_use_ -= u->second.bytes;
  used_.erase(u);
  auto next = free_.lower_bound(start);
  if (next != free_.end() && next->first == end) {
    end += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      start = prev->first;
      free_.erase(prev);
    }
  }
  free_.emplace(start, end - start);
  return Status::Ok();
}

}  // namespace shardwire
