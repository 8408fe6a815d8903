// Transfer plan: the byte moves that turn one layout of a set of tensors into another.
//
// Both RL weight sync (trainer layout -> inference layout) and P2P loading (serving
// instance layout -> new instance layout) are this problem. Offsets are byte offsets
// into the per-rank buffers defined by shardwire::Layout. Planning is deterministic:
// the same two layouts give the same moves in every process, so each process can
// compute its own share without a central broadcast.
//
// Thread-safety: PlanTransfer is pure; a TransferPlan is immutable.
#pragma once

#include <cstdint>
#include <vector>

#include "shardwire/layout.h"
#include "shardwire/status.h"

namespace shardwire {

/// Copy `length` bytes from source rank `src_rank`'s buffer at `src_offset` to
/// destination rank `dst_rank`'s buffer at `dst_offset`.
struct Move {
  std::uint32_t src_rank = 0;
  std::uint32_t dst_rank = 0;
  std::uint64_t src_offset = 0;
  std::uint64_t dst_offset = 0;
  std::uint64_t length = 0;
  bool operator==(const Move&) const = default;
};

class TransferPlan {
 public:
  TransferPlan(int src_world, int dst_world, std::vector<Move> moves, std::uint64_t runs_before_coalescing);

  int src_world() const { return src_world_; }
  int dst_world() const { return dst_world_; }
  /// Sorted by (src_rank, dst_rank, src_offset); maximal: no two moves can be merged.
  const std::vector<Move>& moves() const { return moves_; }
  /// Contiguous runs found before adjacent runs were merged into moves.
  std::uint64_t runs_before_coalescing() const { return runs_before_coalescing_; }
  std::uint64_t total_bytes() const;
  /// The moves a source rank sends (a contiguous slice of moves()).
  std::vector<Move> MovesFrom(int src_rank) const;
  /// The moves a destination rank receives.
  std::vector<Move> MovesTo(int dst_rank) const;
  /// Distinct source ranks that send to `dst_rank`, ascending.
  std::vector<int> SourcesOf(int dst_rank) const;

 private:
  int src_world_;
  int dst_world_;
  std::vector<Move> moves_;
  std::uint64_t runs_before_coalescing_;
};

/// Plans the moves that fill every shard of `dst` from the shards of `src`.
///
/// Tensors are matched by name. Where several source ranks hold the same bytes
/// (replicated tensors, replica groups), each destination byte is taken from exactly
/// one of them; the choice rotates over the holders by (tensor, destination rank) so
/// replicas share the sending (policy "spread over replicas").
/// Errors: kLayoutMismatch when the layouts disagree on the tensor set, a shape or a
/// dtype (the message counts the differences and lists the first few); kInvalidArgument
/// when some destination bytes are held by no source rank (names tensor and box).
Result<TransferPlan> PlanTransfer(const Layout& src, const Layout& dst);

}  // namespace shardwire
