// Per-version integrity check of the RL push (WeightSyncOptions::verify_digests): for every
// (trainer rank, engine rank) pair, both sides hash the pair's bytes of one push, the trainer
// where it sends them from and the engine where they landed, in the same order (the direct
// moves in plan order, then each conversion round's moves), with XXH3-64 (xxHash). DONE(v)
// carries the trainer's digest; the engine commits v only if every source's digest matches.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <xxhash.h>

#include "shardwire/transfer_plan.h"

namespace shardwire::workflows {

/// Which side of a move a digest reads.
enum class MoveSide { kSource, kDestination };

/// An XXH3-64 digest built move by move (one row after another).
class PushDigest {
 public:
  PushDigest();
  /// Adds the bytes of `moves` on `side`, each at base + its offset (+ row * stride).
  void Add(const std::byte* base, const std::vector<Move>& moves, MoveSide side);
  /// Adds the source bytes of `moves` of a trainer rank: offsets below buffer.size() in
  /// `buffer`, the others (reduced Partial sums) in `scratch` at offset - buffer.size().
  void AddSource(std::span<const std::byte> buffer, std::span<const std::byte> scratch, const std::vector<Move>& moves);
  std::uint64_t value() const;

 private:
  struct Free {
    void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
  };
  std::unique_ptr<XXH3_state_t, Free> state_;
};

}  // namespace shardwire::workflows
