// The resharding planner: two layouts of the same tensors -> a TransferPlan.
//
// Algorithm (deterministic; every process computes the same plan):
//  1. Match tensors by name; global shapes and dtypes must agree.
//  2. Per tensor, group destination ranks holding the same box at the same buffer
//     offset (destination classes: e.g. one TP rank across all engine replicas) and
//     source ranks holding the same box (source classes: replicas).
//  3. Per destination class, take each source class's intersection with what is still
//     missing (box algebra), choose the holder by the replica policy, and emit the
//     intersection's maximal contiguous runs (one run for dim-0 shards, one per row for
//     dim-1 shards) as moves to the destination group, split by process (LOCAL).
//     Partial(sum) sources are summed first at a reducer on the source side (see
//     Reduction in transfer_plan.h); the destination only ever receives the sum.
//  4. Coalesce runs adjacent in both buffers (also across tensors), cap move sizes at
//     the bucket size, form buckets per (source, destination group, delivery), and
//     schedule them in rounds (deterministic; bytes balanced per round, see
//     src/plan/schedule.h) so that no destination receives from more than K sources and
//     no source sends to more than K destinations at once; a broadcast counts
//     min(|group|, K) sends for its source (a fan-out tree of degree K) and one receive
//     per member.
//
// Thread-safety: pure function.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "shardwire/layout.h"
#include "shardwire/status.h"
#include "shardwire/transfer_plan.h"

namespace shardwire {

/// Which replica sends when several source ranks hold the same bytes.
enum class ReplicaPolicy : std::uint8_t {
  /// Spread over replicas: each piece goes to the holder that has sent the fewest bytes
  /// so far (ties: lowest rank); pieces of 64 KiB or more are first split across the
  /// holders (on their first dimension longer than one). Balances the
  /// sending across replica groups (HSDP replicas, Replicate placements).
  kSpread,
  /// One replica group sends everything: always the lowest-ranked holder. Leaves the
  /// other replicas free (e.g. to keep training) at the cost of balance.
  kFirstReplica,
};

struct PlanOptions {
  std::uint64_t bucket_bytes = 64ull << 20;  ///< bucket (and maximal move) size cap, bytes
  int max_concurrency = 4;                   ///< K: peers a rank talks to at once
  ReplicaPolicy replica_policy = ReplicaPolicy::kSpread;
  /// Optional process id of each source / destination rank (sizes = world sizes, or
  /// empty): a move between ranks of the same process is LOCAL.
  std::vector<int> src_process = {};
  std::vector<int> dst_process = {};
};

/// Plans the moves that fill every shard of `dst` from the shards of `src`.
/// Errors (one Status each):
///  * kLayoutMismatch: the tensor sets, a shape or a dtype differ (the message counts the
///    differences and lists the first few);
///  * kInvalidArgument: destination bytes that no source rank holds (names tensor and
///    box); a Partial destination; bad options (bucket_bytes 0, or so small that the plan
///    would have more than 2^26 moves; K < 1; process maps of the wrong size, or only one
///    of src_process / dst_process given); a source box held both as values and as
///    Partial addends.
Result<TransferPlan> PlanTransfer(const Layout& src, const Layout& dst, const PlanOptions& options = {});

/// Re-assigns Bucket::round over several plans between the same source and destination
/// worlds as if their buckets formed one plan (same rule as PlanTransfer's step 4: in every
/// round no source rank sends to more than `k` destinations and no destination rank receives
/// from more than `k` sources, now counted across all the plans; destination groups with the
/// same members are one group, so a source's buckets to the same destinations in several plans
/// form one pair and share one round). Used by a push that moves some tensors unchanged (one plan)
/// and converts others (a second plan over the converted tensors): run round by round, the
/// two parts together respect K. Moves, groups, buckets and reductions are otherwise
/// unchanged. Errors: kInvalidArgument when `k` < 1, a pointer is null or the plans' world
/// sizes differ. Not thread-safe for the plans it changes.
Status ScheduleJointly(std::span<TransferPlan* const> plans, int k);

}  // namespace shardwire
