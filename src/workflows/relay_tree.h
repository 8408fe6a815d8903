// Engine-to-engine relays of a push (WeightSyncOptions::relay_broadcasts): engine ranks that
// hold identical shards at identical offsets (the same TP rank of every engine replica) get
// the same bytes from every trainer, so the trainers write one of them and it forwards its
// buffer to the others after it committed the version, along a K-ary tree (the fan-out tree
// the planner's K accounting assumes for a broadcast, shardwire/planner.h step 4).
#pragma once

#include <cstdint>
#include <vector>

#include "shardwire/layout.h"
#include "shardwire/push_conversion.h"

namespace shardwire::workflows {

/// Per engine rank: its relay parent (-1: it is a tree's root, or has no replica) and its
/// children (ascending).
struct RelayTree {
  std::vector<int> parent;
  std::vector<std::vector<int>> children;
  /// True when `rank` has a replica (it is in a tree of two or more ranks).
  bool Relays(int rank) const {
    return parent[static_cast<std::size_t>(rank)] >= 0 || !children[static_cast<std::size_t>(rank)].empty();
  }
};

/// Groups the engine ranks of `engine` whose shards are identical (same tensors, boxes, byte
/// offsets, partial groups and buffer size) and arranges each group, ranks r_0 < r_1 < ... in
/// ascending order, as a K-ary tree in heap order: r_i's parent is r_((i-1)/k) (k >= 1; k = 1
/// is a chain). Deterministic, so trainers and engines compute the same tree.
RelayTree MakeRelayTree(const Layout& engine, int k);

/// A byte range of a rank buffer.
struct ByteRange {
  std::uint64_t offset = 0;  ///< bytes from the buffer's start
  std::uint64_t length = 0;  ///< bytes
  bool operator==(const ByteRange&) const = default;
};

/// The byte ranges of engine rank `rank`'s buffer that a push writes (the direct and the
/// converted plan's moves, strided ones row by row), ascending and merged where adjacent or
/// overlapping: what a relay forwards (padding the push never writes stays untouched).
std::vector<ByteRange> WrittenRanges(const PushConversion& conversion, int rank);

}  // namespace shardwire::workflows
