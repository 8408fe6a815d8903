// Internal: the compute half of a converting push on one trainer rank (shardwire/push_conversion.h):
// partial amaxes of the blocks it shares with other trainer ranks, and the conversion of one
// round's pieces from the trainer's buffer into a staging slot. The publisher does the transport.
//
// Thread-safety: one thread at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <unordered_map>
#include <vector>

#include "shardwire/layout.h"
#include "shardwire/push_conversion.h"
#include "shardwire/status.h"

namespace shardwire::workflows {

class PushConverter {
 public:
  /// `trainer_buffer` holds the rank's shards laid out by `trainer`, `scratch` its scratch area
  /// (the reduced Partial(sum) chunks it converts, PushConversion::SourceOf; they must be reduced
  /// before PartialAmax and the conversion run); all must outlive this.
  PushConverter(const Layout& trainer, int rank, const PushConversion& conversion, TrainerConversion plan,
                std::span<const std::byte> trainer_buffer, std::span<const std::byte> scratch, Fp8BlockOptions fp8);

  const TrainerConversion& plan() const { return plan_; }

  /// This rank's partial amax of every block in `blocks` (BlockAmaxExchange::send order).
  /// Errors: kCorruptData naming the tensor and element for NaN / Inf.
  Result<std::vector<float>> PartialAmax(const std::vector<BlockRef>& blocks) const;

  /// Forgets the peers' amaxes of the previous version.
  void ClearPeerAmax() { peer_amax_.clear(); }
  /// Records a peer's partial amaxes (`values` in `blocks` order). kCorruptData when the
  /// counts differ or a value is negative / not finite (names the peer).
  Status AddPeerAmax(const std::vector<BlockRef>& blocks, const std::vector<float>& values, const std::string& peer);

  /// Converts round `round`'s pieces into `slot` (at least plan().slot_bytes bytes).
  /// Errors: kCorruptData naming tensor and element for NaN / Inf input; conversion errors.
  Status ConvertRound(std::size_t round, std::span<std::byte> slot) const;

  /// Receives converted bytes that are not written into a staging slot: `slot_offset` is where
  /// they would lie in round's slot (the offsets the round's moves use), `bytes` are valid only
  /// during the call.
  using Sink = std::function<Status(std::uint64_t slot_offset, std::span<const std::byte> bytes)>;
  /// Bytes of scratch ConvertRoundTo needs: kScratchBytes, or one FP8 row and its scales of the
  /// widest converted tensor when that is more.
  static constexpr std::size_t kScratchBytes = std::size_t{64} << 10;
  std::size_t ScratchBytes() const { return scratch_bytes_; }
  /// Converts round `round`'s pieces as ConvertRound does (the same bytes), but a few rows at a
  /// time into `scratch` (ScratchBytes() or more; it stays in the CPU's cache), handing each chunk
  /// to `sink` (e.g. copying it straight into mapped engine buffers). Errors: as ConvertRound,
  /// and the sink's first error.
  Status ConvertRoundTo(std::size_t round, std::span<std::byte> scratch, const Sink& sink) const;

 private:
  // The whole-block amaxes of block-row part `part` of a piece (this rank's partial amaxes raised
  // to the peers' where recorded), row-major over Fp8BlocksTouched(part).
  Status BlockRowAmax(const ConversionPiece& p, DType from, std::span<const std::byte> part_src,
                      const Fp8ShardBox& part, const Fp8ErrorContext& ctx, std::vector<float>& amax) const;
  static std::uint64_t Key(std::uint32_t tensor, std::int64_t i, std::int64_t j);
  // The bytes of rows [row_begin, row_end) of what the rank converts into `wire_tensor`: its own
  // shard in the trainer buffer, or a reduced chunk in the scratch (PushConversion::SourceOf).
  Result<std::span<const std::byte>> SourceRows(std::uint32_t wire_tensor, std::int64_t row_begin, std::int64_t row_end,
                                                Box* box) const;

  const Layout& trainer_;
  int rank_;
  const PushConversion& conversion_;
  TrainerConversion plan_;
  std::span<const std::byte> buffer_;
  std::span<const std::byte> scratch_;
  Fp8BlockOptions fp8_;
  std::unordered_map<std::uint64_t, float> peer_amax_;
  std::size_t scratch_bytes_ = kScratchBytes;
};

}  // namespace shardwire::workflows
