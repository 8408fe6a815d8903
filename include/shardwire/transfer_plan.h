// Transfer plan: the byte moves that turn one layout of a set of tensors into another,
// grouped into buckets and scheduled in rounds.
//
// Both RL weight sync (trainer layout -> inference layout) and P2P loading (serving
// instance layout -> new instance layout) are this problem. Offsets are byte offsets
// into the per-rank buffers defined by shardwire::Layout. A move goes from one source
// rank to a *destination group*: the destination ranks that hold the same bytes at the
// same offset (e.g. the same TP rank of every engine replica), so replicated
// destinations are planned once and can be served by one broadcast.
//
// Thread-safety: a TransferPlan is immutable once built (PlanTransfer, SetReductions and
// ScheduleJointly done); after that its const methods may be called from any thread at once.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "shardwire/status.h"

namespace shardwire {

/// How a bucket's bytes travel.
enum class DeliveryKind : std::uint8_t {
  kLocal,      ///< source and destination are the same process: a copy
  kP2P,        ///< one source range to one destination rank (one-sided WRITE)
  kBroadcast,  ///< one source range to several destination ranks (fan-out tree allowed)
};
/// "LOCAL", "P2P" or "BROADCAST" (the names `shardwire plan` prints). Pure; any thread.
std::string_view DeliveryKindName(DeliveryKind kind);

/// Copy `count` runs of `length` bytes from source rank `src_rank`'s buffer to every
/// rank of destination group `dst_group`: run i goes from src_offset + i * src_stride
/// to dst_offset + i * dst_stride (bytes). count == 1 is a plain contiguous move; the
/// strided form carries e.g. all rows of a row-parallel (dim-1) shard in one move.
struct Move {
  std::uint32_t src_rank = 0;
  std::uint32_t dst_group = 0;
  std::uint64_t src_offset = 0;
  std::uint64_t dst_offset = 0;
  std::uint64_t length = 0;
  std::uint64_t count = 1;
  std::uint64_t src_stride = 0;
  std::uint64_t dst_stride = 0;

  /// Bytes moved to each destination: length * count.
  std::uint64_t bytes() const { return length * count; }
  bool operator==(const Move&) const = default;
};

/// A run of consecutive moves with one source, one destination group and one delivery kind,
/// at most PlanOptions::bucket_bytes long, executed in schedule round `round`.
struct Bucket {
  std::uint32_t src_rank = 0;
  std::uint32_t dst_group = 0;
  DeliveryKind delivery = DeliveryKind::kP2P;
  std::uint32_t round = 0;
  std::uint64_t first_move = 0;  ///< index into TransferPlan::moves()
  std::uint64_t move_count = 0;
  std::uint64_t bytes = 0;  ///< sum of the moves' bytes() (per destination)
  bool operator==(const Bucket&) const = default;
};

/// Partial(sum) sources are reduced before anything reaches a destination, at a
/// *reducer*: one member of the sum group (the least-loaded one), on the source side.
/// Why there: the reducer already holds one addend, so a piece held by n ranks costs
/// n - 1 transfers instead of n; the destination is written once, with final values, so
/// it never sees an unreduced byte and needs no staging memory (inference engines are
/// short of memory, trainers hold gradient-sized buffers anyway).
///
/// Each source rank has a scratch area after its buffer (TransferPlan::scratch_bytes);
/// plan offsets at or beyond the rank's layout buffer size address it. A reduction of a
/// piece of `bytes` bytes with n addends uses n consecutive slots of `bytes` at
/// `scratch_offset`: ReduceCopy steps copy addend i (from `src_rank`'s buffer, possibly
/// strided) into slot i, then the reducer sums the slots elementwise in `dtype` into slot
/// 0, and the plan's moves carry slot 0 onwards (a converting push's reductions of converted
/// tensors are converted from slot 0 instead: shardwire/push_conversion.h).
struct ReduceCopy {
  std::uint32_t reducer = 0;      ///< source rank that reduces
  std::uint32_t src_rank = 0;     ///< source rank holding the addend (may be the reducer)
  std::uint64_t src_offset = 0;   ///< bytes, in src_rank's buffer
  std::uint64_t slot_offset = 0;  ///< bytes, from the start of the reducer's scratch area
  std::uint64_t length = 0;       ///< bytes per run
  std::uint64_t count = 1;        ///< runs
  std::uint64_t src_stride = 0;   ///< bytes between runs in the source
  std::uint64_t slot_stride = 0;  ///< bytes between runs in the slot
  bool operator==(const ReduceCopy&) const = default;
};

/// One piece held as Partial(sum) by several source ranks: source rank `reducer` receives
/// `addends` slots (its own and the others' copies, ReduceCopy) and sums them before sending.
struct Reduction {
  std::uint32_t reducer = 0;         ///< the source rank that sums the slots
  std::uint64_t scratch_offset = 0;  ///< slot 0, bytes from the start of the reducer's scratch
  std::uint64_t bytes = 0;           ///< bytes per slot
  std::uint32_t addends = 0;         ///< slots
  std::uint8_t dtype = 0;            ///< shardwire::DType of the elements (summed in it)
  bool operator==(const Reduction&) const = default;
};

/// Per-rank traffic summary (bytes).
struct TrafficStats {
  std::uint64_t min = 0, max = 0;
  double mean = 0;
};

class TransferPlan {
 public:
  TransferPlan() = default;
  /// Takes the parts as given, unchecked: moves must be sorted by (src_rank, dst_group,
  /// src_offset) and groups ascending, or MovesFrom answers wrongly. Build plans with
  /// PlanTransfer or DeserializePlan, which check.
  TransferPlan(int src_world, int dst_world, std::vector<std::vector<std::uint32_t>> dst_groups,
               std::vector<Move> moves, std::vector<Bucket> buckets, std::uint64_t runs_before_coalescing);

  /// Attaches the reductions of Partial sources (see Reduction): their copies, the sums,
  /// and each source rank's scratch size in bytes (src_world entries, or empty).
  void SetReductions(std::vector<ReduceCopy> copies, std::vector<Reduction> reductions,
                     std::vector<std::uint64_t> scratch_bytes);
  const std::vector<ReduceCopy>& reduce_copies() const { return reduce_copies_; }
  const std::vector<Reduction>& reductions() const { return reductions_; }
  /// Scratch bytes source rank `rank` needs after its buffer (0 without Partial sources).
  std::uint64_t scratch_bytes(int rank) const;

  int src_world() const { return src_world_; }
  int dst_world() const { return dst_world_; }
  /// Destination groups: sorted, distinct destination ranks.
  const std::vector<std::vector<std::uint32_t>>& dst_groups() const { return dst_groups_; }
  /// Sorted by (src_rank, dst_group, src_offset); no two contiguous moves can be merged.
  const std::vector<Move>& moves() const { return moves_; }
  const std::vector<Bucket>& buckets() const { return buckets_; }
  /// Number of schedule rounds (1 + the largest Bucket::round; 0 for an empty plan).
  std::uint32_t rounds() const;
  /// Contiguous runs found before adjacent runs were merged into moves (a strided move
  /// of count runs counts count).
  std::uint64_t runs_before_coalescing() const { return runs_before_coalescing_; }

  /// Bytes delivered: sum over moves of bytes() x destination-group size.
  std::uint64_t total_bytes() const;
  /// The moves a source rank sends (one per destination group; see dst_groups()).
  std::vector<Move> MovesFrom(int src_rank) const;
  /// The moves a destination rank receives.
  std::vector<Move> MovesTo(int dst_rank) const;
  /// Distinct source ranks that send to `dst_rank`, ascending.
  std::vector<int> SourcesOf(int dst_rank) const;
  /// Bytes each source rank sends (counting each destination of a group) and each
  /// destination rank receives.
  std::vector<std::uint64_t> BytesSentPerSource() const;
  std::vector<std::uint64_t> BytesReceivedPerDestination() const;

 private:
  int src_world_ = 0;
  int dst_world_ = 0;
  std::vector<std::vector<std::uint32_t>> dst_groups_;
  std::vector<Move> moves_;
  std::vector<Bucket> buckets_;
  std::uint64_t runs_before_coalescing_ = 0;
  std::vector<ReduceCopy> reduce_copies_;
  std::vector<Reduction> reductions_;
  std::vector<std::uint64_t> scratch_bytes_;
};

/// min / mean / max of `values`.
TrafficStats Summarize(std::span<const std::uint64_t> values);

}  // namespace shardwire
