// How a P2P load divides a destination rank's bytes among source instances: pure
// functions over byte runs, so the splitting and re-planning logic is unit-testable
// without a transport.
#pragma once

#include <cstdint>
#include <vector>

#include "shardwire/layout.h"
#include "shardwire/status.h"

namespace shardwire::workflows {

/// `length` bytes at `dst_offset` of the destination rank's buffer come from
/// `src_offset` of source rank `src_rank`'s buffer.
struct SourceRun {
  std::uint64_t dst_offset = 0;
  std::uint64_t length = 0;
  std::uint32_t src_rank = 0;
  std::uint64_t src_offset = 0;
  bool operator==(const SourceRun&) const = default;
};

/// A half-open byte range [begin, end) of the destination buffer.
struct Interval {
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
  bool operator==(const Interval&) const = default;
};

/// Where every byte `dst_rank` needs lives in one source instance of layout `src`
/// (PlanTransfer with ReplicaPolicy::kSpread, so replicated tensors are spread over
/// the instance's ranks), as runs sorted by dst_offset, strided moves expanded,
/// adjacent runs merged. Errors: those of PlanTransfer (kLayoutMismatch, ...).
Result<std::vector<SourceRun>> CoverageOf(const Layout& src, const Layout& dst, int dst_rank);

/// The merged destination intervals of sorted runs.
std::vector<Interval> IntervalsOf(const std::vector<SourceRun>& runs);

/// Total bytes of sorted, disjoint intervals.
std::uint64_t TotalBytes(const std::vector<Interval>& intervals);

/// Splits sorted, disjoint intervals into `parts` consecutive portions whose byte
/// counts differ by at most one (`parts` >= 1; empty portions when there are fewer
/// bytes than parts).
std::vector<std::vector<Interval>> SplitEvenly(const std::vector<Interval>& intervals, std::size_t parts);

/// The parts of `coverage` (sorted runs) inside sorted, disjoint `intervals`.
std::vector<SourceRun> Clip(const std::vector<SourceRun>& coverage, const std::vector<Interval>& intervals);

/// Groups runs by source rank (ascending) and cuts each group into moves of at most
/// `move_bytes` bytes (a longer run is split), in dst_offset order.
std::vector<std::vector<SourceRun>> CutMoves(const std::vector<SourceRun>& runs, std::uint64_t move_bytes);

/// `count` runs of `length` bytes: run i moves [src_offset + i * src_stride, +
/// length) of the source rank's buffer to [dst_offset + i * dst_stride, + length)
/// of the destination buffer (count 1: the strides are 0). The shape of a strided
/// TransferDescriptor (shardwire/transfer_descriptor.h).
struct StridedSourceRun {
  std::uint64_t dst_offset = 0;
  std::uint64_t src_offset = 0;
  std::uint64_t length = 0;
  std::uint64_t count = 1;
  std::uint64_t dst_stride = 0;
  std::uint64_t src_stride = 0;
  bool operator==(const StridedSourceRun&) const = default;
};

/// Regroups runs of one move (in the given order) into strided runs: a run joins
/// the previous group when it has the group's length and its offsets continue
/// the group's constant strides, both >= length (so the rows never overlap, as
/// a strided descriptor requires); otherwise it starts a group. The rows of a
/// row-parallel (dim 1) shard, expanded to one run per row by CoverageOf, come
/// back as one strided run per source shard. Expanding the result row by row
/// gives `runs` again, in order.
std::vector<StridedSourceRun> GroupStrided(const std::vector<SourceRun>& runs);

/// Sorted, merged union of intervals.
std::vector<Interval> Normalize(std::vector<Interval> intervals);

}  // namespace shardwire::workflows
