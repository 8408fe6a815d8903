// Internal: the compute half of a converting push on one trainer rank (shardwire/push_conversion.h):
// partial amaxes of the blocks it shares with other trainer ranks, and the conversion of one
// round's pieces from the trainer's buffer into a staging slot. The publisher does the transport.
//
// Thread-safety: one thread at a time.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "shardwire/layout.h"
#include "shardwire/push_conversion.h"
#include "shardwire/status.h"

namespace shardwire::sync {

class PushConverter {
 public:
  /// `trainer_buffer` holds the rank's shards laid out by `trainer`; both must outlive this.
  PushConverter(const Layout& trainer, int rank, const PushConversion& conversion, TrainerConversion plan,
                std::span<const std::byte> trainer_buffer, Fp8BlockOptions fp8);

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

 private:
  static std::uint64_t Key(std::uint32_t tensor, std::int64_t i, std::int64_t j);
  // The trainer-buffer bytes of rows [row_begin, row_end) of the rank's shard of `trainer_tensor`.
  Result<std::span<const std::byte>> SourceRows(std::uint32_t trainer_tensor, std::int64_t row_begin,
                                                std::int64_t row_end, Box* box) const;

  const Layout& trainer_;
  int rank_;
  const PushConversion& conversion_;
  TrainerConversion plan_;
  std::span<const std::byte> buffer_;
  Fp8BlockOptions fp8_;
  std::unordered_map<std::uint64_t, float> peer_amax_;
};

}  // namespace shardwire::sync
