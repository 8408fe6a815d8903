// Engine-to-engine relays of a push (WeightSyncOptions::relay_broadcasts): engine ranks that
// hold identical shards at identical offsets (the same TP rank of every engine replica) get
// the same bytes from every trainer, so the trainers write one of them and it forwards its
// buffer to the others after it committed the version, along a K-ary tree (the fan-out tree
// the planner's K accounting assumes for a broadcast, shardwire/planner.h step 4).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "shardwire/layout.h"
#include "shardwire/push_conversion.h"
#include "shardwire/status.h"
#include "workflows/sync_messages.h"

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

/// Most children a relay parent has: a RELAY_PLAN carries its child count in one byte
/// (sync_messages.h), so MakeRelayTree caps its fan-out here whatever K is.
inline constexpr int kMaxRelayFanout = 255;

/// Groups the engine ranks of `engine` whose shards are identical (same tensors, boxes, byte
/// offsets, partial groups and buffer size) and arranges each group, ranks r_0 < r_1 < ... in
/// ascending order, as a k'-ary tree in heap order, k' = min(max(k, 1), kMaxRelayFanout):
/// r_i's parent is r_((i-1)/k') (k' = 1 is a chain). Deterministic, so trainers and engines
/// compute the same tree.
RelayTree MakeRelayTree(const Layout& engine, int k);

/// How many ancestors `rank` has in `tree` (0: a root, or a rank without replicas).
/// Precondition: 0 <= rank < tree.parent.size().
int RelayDepth(const RelayTree& tree, int rank);

/// Checks a RELAY_PLAN that engine rank `rank` received against the tree it computed itself:
/// `relay_from`, when set, must be its parent in `tree`; every one of `relay_to` must be a
/// child of `rank` in `tree`, each named once. Errors: kCorruptData naming the first wrong
/// entry (a peer of another build, or a corrupt message); nothing for a valid plan.
Status CheckRelayPlan(const RelayTree& tree, int rank, std::optional<std::uint32_t> relay_from,
                      std::span<const RelayTarget> relay_to);

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
