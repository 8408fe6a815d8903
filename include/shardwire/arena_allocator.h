// ArenaAllocator: sub-allocates byte ranges inside one registered region.
//
// One registration (Agent::AllocateArena) can serve thousands of tensors:
// registration cost and metadata size then grow with arenas, not tensors
// (bench/agent_registration.cc measures both). The allocator only hands out
// offsets; it never touches memory and knows nothing about UCX, so it also
// works for regions from Agent::RegisterMemory.
//
// Policy: first fit over a free list ordered by offset; alignment padding
// before an allocation belongs to that allocation (no tiny free fragments);
// freeing merges a range with its free neighbours. Allocate is O(free ranges),
// Free is O(log n). Filling an empty arena front to back (the usual "lay out a
// model" case) keeps a single free range, so each Allocate is O(log n).
//
// Thread-safety: not thread-safe; one object per thread or external locking.
#pragma once

#include <cstdint>
#include <map>

#include "shardwire/status.h"

namespace shardwire {

class ArenaAllocator {
 public:
  /// An allocator over [0, capacity) bytes.
  explicit ArenaAllocator(std::uint64_t capacity);

  /// Reserves `bytes` bytes whose offset is a multiple of `alignment` and
  /// returns that offset (bytes from the start of the arena).
  /// Errors: kInvalidArgument for zero bytes or an alignment that is not a
  /// power of two; kNotFound when no free range can hold the request (the
  /// message gives the largest free range).
  Result<std::uint64_t> Allocate(std::uint64_t bytes, std::uint64_t alignment = 64);

  /// Returns the allocation that starts at `offset` to the free list.
  /// Errors: kNotFound when no allocation starts at `offset` (double free).
  Status Free(std::uint64_t offset);

  /// Size of the arena in bytes.
  std::uint64_t capacity() const { return capacity_; }
  /// Bytes currently allocated (alignment padding not counted).
  std::uint64_t bytes_in_use() const { return in_use_; }
  /// Number of live allocations.
  std::size_t allocations() const { return used_.size(); }

 private:
  std::uint64_t capacity_;
  std::uint64_t in_use_ = 0;
  std::map<std::uint64_t, std::uint64_t> free_;  // offset -> length, disjoint, non-adjacent
  struct Extent {
    std::uint64_t begin = 0;  // first byte taken (padding included)
    std::uint64_t end = 0;    // one past the last byte taken
    std::uint64_t bytes = 0;  // bytes requested
  };
  std::map<std::uint64_t, Extent> used_;  // returned offset -> extent
};

}  // namespace shardwire
