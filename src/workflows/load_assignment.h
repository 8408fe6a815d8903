// How a P2P load divides a destination rank's bytes among source instances: pure
// functions over byte runs, so the splitting and re-planning logic is unit-testable
// without a transport.
#pragma once

#include <cstdint>
#include <vector>

#include "shardwire/layout.h"
#include "shardwire/shard_io.h"
#include "shardwire/status.h"

namespace shardwire::workflows {

/// `count` rows of `length` bytes from source rank `src_rank`: row i moves
/// [src_offset + i * src_stride, + length) of that rank's buffer to [dst_offset + i *
/// dst_stride, + length) of the destination rank's buffer. count 1: one contiguous run,
/// strides 0. count > 1: both strides >= length, so rows never overlap (the shape of a
/// strided TransferDescriptor, shardwire/transfer_descriptor.h, and of the planner's
/// strided Move). A row-parallel (dim 1) shard is one such run per source shard, not one
/// run per row (41,000 rows per rank in bench/p2p_load_bench's tp=2 -> tp=4 load).
struct SourceRun {
  std::uint64_t dst_offset = 0;
  std::uint64_t length = 0;
  std::uint32_t src_rank = 0;
  std::uint64_t src_offset = 0;
  std::uint64_t count = 1;
  std::uint64_t dst_stride = 0;
  std::uint64_t src_stride = 0;

  /// Bytes moved: length * count.
  std::uint64_t bytes() const { return length * count; }
  /// One past the last destination byte of the last row.
  std::uint64_t dst_end() const { return dst_offset + (count - 1) * dst_stride + length; }
  /// Row `i` (< count) as a one-row run.
  SourceRun Row(std::uint64_t i) const {
    return {dst_offset + i * dst_stride, length, src_rank, src_offset + i * src_stride};
  }
  bool operator==(const SourceRun&) const = default;
};

/// Calls fn(dst_offset, src_offset, length) for each row of `run`, in order.
template <typename Fn>
void ForEachRow(const SourceRun& run, Fn&& fn) {
  for (std::uint64_t i = 0; i < run.count; ++i) {
    fn(run.dst_offset + i * run.dst_stride, run.src_offset + i * run.src_stride, run.length);
  }
}

/// A half-open byte range [begin, end) of the destination buffer (the disk fallback
/// reads exactly these from a checkpoint: ShardReadOptions::only).
using Interval = BufferInterval;

/// Where every byte `dst_rank` needs lives in one source instance of layout `src`
/// (PlanTransfer with ReplicaPolicy::kSpread, so replicated tensors are spread over
/// the instance's ranks), as runs sorted by dst_offset: the plan's strided moves stay
/// strided (rows contiguous in both buffers become one run), adjacent contiguous runs of
/// one source rank are merged. Runs never share a destination byte, but the rows of two
/// strided runs may interleave (a destination row assembled from two source ranks).
/// Errors: those of PlanTransfer (kLayoutMismatch, ...).
Result<std::vector<SourceRun>> CoverageOf(const Layout& src, const Layout& dst, int dst_rank);

/// Appends the destination bytes of `run` to `out`: one interval when its rows are
/// contiguous at the destination (count 1 or dst_stride == length), else one per row.
void AppendIntervals(const SourceRun& run, std::vector<Interval>& out);

/// The merged destination intervals of runs (sorted, disjoint).
std::vector<Interval> IntervalsOf(const std::vector<SourceRun>& runs);

/// Total bytes of sorted, disjoint intervals.
std::uint64_t TotalBytes(const std::vector<Interval>& intervals);

/// Splits sorted, disjoint intervals into `parts` consecutive portions whose byte
/// counts differ by at most one (`parts` >= 1; empty portions when there are fewer
/// bytes than parts).
std::vector<std::vector<Interval>> SplitEvenly(const std::vector<Interval>& intervals, std::size_t parts);

/// The parts of `coverage` (runs as CoverageOf makes them) inside sorted, disjoint
/// `intervals`, sorted by dst_offset. A strided run keeps its stride for the rows an
/// interval holds whole; a row the interval cuts becomes a one-row run of its part.
std::vector<SourceRun> Clip(const std::vector<SourceRun>& coverage, const std::vector<Interval>& intervals);

/// Groups runs by source rank (ascending) and cuts each group, in dst_offset order,
/// into moves of exactly `move_bytes` bytes but the last of each group (0 counts as 1):
/// a strided run is split between rows, and a row is split where a move must end
/// inside it. Every byte of `runs` is in exactly one move, from the same source bytes.
std::vector<std::vector<SourceRun>> CutMoves(const std::vector<SourceRun>& runs, std::uint64_t move_bytes);

/// The move size, in bytes, for a source capped at `bandwidth_bytes_per_s` (> 0; +inf
/// and huge caps allowed) when a lease lasts `lease_seconds`: one lease's worth,
/// rounded down, at most `move_bytes` and at least min(64 KiB, `move_bytes`), so a
/// slow source is not read in tiny moves and a move is never larger than the loader
/// asked for. Compared as doubles: a cap beyond uint64 never reaches an integer
/// conversion. Pure; thread-safe.
std::uint64_t CappedMoveBytes(double bandwidth_bytes_per_s, double lease_seconds, std::uint64_t move_bytes);

/// Sorted, merged union of intervals.
std::vector<Interval> Normalize(std::vector<Interval> intervals);

}  // namespace shardwire::workflows
