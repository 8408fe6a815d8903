// Read once, write to every replica: the direct moves of one push into engine buffers that this
// process maps (WeightSyncOptions::copy_into_mapped, Agent::MapPeerRegion), copied by the
// pushing threads instead of the transport's lanes.
//
// The engine ranks that hold identical shards (the same TP rank of every engine replica) take
// identical moves from a trainer rank: the planner gives them one destination group and puts
// the group's buckets in one schedule round (transfer_plan.h). A lane copies each transfer on
// its own, so a trainer reads every source byte from memory once per replica. Here the moves
// of such a group are copied chunk by chunk (kFanoutChunkBytes), each chunk into every
// replica's buffer while it is still in this core's cache: the source is read from memory
// once, whatever the replica count. Writes are streaming stores (core/streaming_store.h): the
// engine reads them, not this core. On a GPU node the same shape is one read of the trainer's
// HBM and one NVLink write per replica through peer mappings (CUDA IPC), as the converter
// already does for converted bytes.
//
// Measured with bench/replica_fanout_bench on the 2-core PVM VM of session 21 (docs/benchmarks_history.md,
// "Read once, write to every replica"): 1.46-1.49x a streaming copy per replica in two of three
// runs with two threads (0.81x in a disturbed one), 1.07x with one thread.
//
// Thread-safety: CopyToReplicas runs its own workers; the destinations must stay mapped (an
// Access held) until it returns, and nothing else may write the same bytes meanwhile.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "shardwire/status.h"
#include "shardwire/transfer_plan.h"

namespace shardwire::workflows {

/// Bytes of one row copied into every replica before the next chunk of it is read (bytes).
/// Small enough that the chunk is still in L2 when the last replica's copy reads it (512 KiB
/// per core on Zen 3, 1-2 MiB on recent Xeons), large enough that the calls cost nothing.
inline constexpr std::uint64_t kFanoutChunkBytes = std::uint64_t{64} << 10;

/// Bytes per destination that a worker takes at a time (bytes): a few hundred items per push,
/// so that two or more workers end together.
inline constexpr std::uint64_t kFanoutPieceBytes = std::uint64_t{1} << 20;

/// A trainer rank's source bytes: plan offsets below weights.size() address `weights`, the
/// others (reduced Partial(sum) shards: transfer_plan.h, Reduction) `scratch` at offset -
/// weights.size() (as PushDigest::AddSource and the publisher's prepared transfers read them).
struct FanoutSource {
  std::span<const std::byte> weights;
  std::span<const std::byte> scratch;
};

/// Identical moves into several destination buffers: each byte range of `moves` (Move's
/// dst_offset / dst_stride) is written at the same offsets of every buffer in `destinations`.
struct FanoutGroup {
  const std::vector<Move>* moves = nullptr;
  std::vector<std::byte*> destinations;  ///< bases of the mapped engine buffers
};

/// Checks that every row of `moves` lies inside `source` (kInvalidArgument naming the move and
/// the range otherwise), so that CopyToReplicas never reads outside the trainer's buffers.
/// The destination side is checked where the buffers are mapped (MappedRegion::Access::Range).
Status CheckFanoutSource(const std::vector<Move>& moves, const FanoutSource& source);

/// What CopyToReplicas did.
struct FanoutStats {
  std::uint64_t bytes_read = 0;     ///< source bytes read (each once)
  std::uint64_t bytes_written = 0;  ///< bytes written, every destination counted
  double cpu_s = 0;                 ///< CPU seconds of the workers (CLOCK_THREAD_CPUTIME_ID), summed
};

/// Copies every group's moves into each of its destinations, on this thread and `workers` - 1
/// helpers (push_workers.h) taking kFanoutPieceBytes pieces in turn. Rows of at least
/// kMinStreamCopyBytes are written with streaming stores and each worker ends with a
/// StreamFence, so the bytes are visible to other processes when this returns. The moves must
/// have passed CheckFanoutSource and the destination ranges must be mapped: nothing is checked
/// here (it cannot fail).
FanoutStats CopyToReplicas(const std::vector<FanoutGroup>& groups, const FanoutSource& source, std::size_t workers);

}  // namespace shardwire::workflows
