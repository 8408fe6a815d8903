// Buckets and rounds of a transfer plan (see shardwire/planner.h, step 4).
#pragma once

#include <cstdint>
#include <vector>

#include "shardwire/status.h"
#include "shardwire/transfer_plan.h"

namespace shardwire::plan {

/// Most moves a plan may have once capped: 2^26 (64 Mi moves, about 4 GiB of them; the largest
/// plans measured, Kimi-K2 at tp=8,dp=16, have a few million).
inline constexpr std::uint64_t kMaxPlanMoves = std::uint64_t{1} << 26;

/// Splits every move longer than `cap` bytes into consecutive pieces of at most `cap`.
/// Errors: kInvalidArgument naming `cap` when the pieces would number more than kMaxPlanMoves
/// (a tiny bucket_bytes; nothing is allocated for them first).
Result<std::vector<Move>> CapMoveLength(std::vector<Move> moves, std::uint64_t cap);

/// Groups consecutive moves (sorted by source, group, offset) with the same source and
/// destination group into buckets of at most `cap` bytes. `local[g]` marks LOCAL groups.
std::vector<Bucket> MakeBuckets(const std::vector<Move>& moves, const std::vector<std::vector<std::uint32_t>>& groups,
                                const std::vector<bool>& local, std::uint64_t cap);

/// Assigns Bucket::round so that in every round no source sends to more than `k`
/// destinations and no destination receives from more than `k` sources. All buckets of
/// one (source, group) pair share a round and run one after another; LOCAL buckets take
/// round 0 and no network slot. Two deterministic schedules are built and the cheaper
/// kept, cost = sum over rounds of the round's busiest link in bytes (a source's egress,
/// counting a broadcast once per member, or a destination's ingress) — the sum of round
/// times on a fabric of equal links (fabric_model.h):
///  * least growth: pairs by decreasing bytes (ties: source, group), each into the round,
///    among those where it fits the K limits, whose busiest link grows least (ties: the
///    earliest); a new round only when none fits;
///  * critical first: round by round, pairs by decreasing urgency (the unscheduled bytes
///    of the pair's busiest link), the first sets the round's length, later ones join
///    when they fit K and do not lengthen it (at most 4x the rounds of the first).
void ScheduleRounds(std::vector<Bucket>& buckets, const std::vector<std::vector<std::uint32_t>>& groups, int src_world,
                    int dst_world, int k);

}  // namespace shardwire::plan
