// Buckets and rounds of a transfer plan (see shardwire/planner.h, step 4).
#pragma once

#include <cstdint>
#include <vector>

#include "shardwire/transfer_plan.h"

namespace shardwire {

/// Splits every move longer than `cap` bytes into consecutive pieces of at most `cap`.
std::vector<Move> CapMoveLength(std::vector<Move> moves, std::uint64_t cap);

/// Groups consecutive moves (sorted by source, group, offset) with the same source and
/// destination group into buckets of at most `cap` bytes. `local[g]` marks LOCAL groups.
std::vector<Bucket> MakeBuckets(const std::vector<Move>& moves, const std::vector<std::vector<std::uint32_t>>& groups,
                                const std::vector<bool>& local, std::uint64_t cap);

/// Assigns Bucket::round so that in every round no source sends to more than `k`
/// destinations and no destination receives from more than `k` sources. All buckets of
/// one (source, group) pair share a round and run one after another; LOCAL buckets take
/// round 0 and no network slot. First fit over (source, group) pairs in order of
/// decreasing bytes (ties: source, group): deterministic.
void ScheduleRounds(std::vector<Bucket>& buckets, const std::vector<std::vector<std::uint32_t>>& groups, int src_world,
                    int dst_world, int k);

}  // namespace shardwire
