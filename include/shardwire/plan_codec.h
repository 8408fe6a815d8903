// Compact binary serialisation of transfer plans, whole or one rank's part.
//
// Format (version 1, little-endian): u32 magic "SWPL", u16 version, u16 flags (bit 0:
// the blob is one rank's part), then LEB128 varints: src_world, dst_world,
// runs_before_coalescing, the destination groups the blob references (id ascending, size,
// ranks ascending and delta-coded), and the buckets (source, group, delivery, round, move count) each
// followed by its moves (source offset and length as deltas from the previous move's
// end, destination offset zigzag-delta-coded), then the reductions of Partial sources
// (scratch sizes, copies, sums); the body is compressed as one zstd frame (libzstd)
// after a u64 of its raw size, and a u64 XXH64 of all bytes before it ends the blob. Moves of a bucket are contiguous
// in both buffers far more often than not, so most moves cost 3-4 bytes.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "shardwire/status.h"
#include "shardwire/transfer_plan.h"

namespace shardwire {

/// Which side of the plan a rank is on.
enum class PlanSide : std::uint8_t { kSource, kDestination };

/// The whole plan.
std::vector<std::byte> SerializePlan(const TransferPlan& plan);

/// Only what `rank` of `side` needs: the buckets it sends (kSource) or receives
/// (kDestination), with their moves and the groups they name. A rank outside that side's
/// world gives an empty part (no buckets).
std::vector<std::byte> SerializePlanPart(const TransferPlan& plan, PlanSide side, int rank);

/// Largest number of destination groups (group ids are below it) a decoded plan may have:
/// 2^20, thousands of times what a real plan uses (about one group per set of replicas).
inline constexpr std::uint64_t kMaxPlanGroups = std::uint64_t{1} << 20;

/// Decodes either form. A part decodes to a plan holding just those buckets (group ids
/// are kept; groups it does not reference are empty). Errors (kCorruptData, naming the
/// check): truncated, bad magic, unsupported version, checksum mismatch, a varint or
/// count that overruns, a rank, group (id >= kMaxPlanGroups) or delivery kind out of range, group ids
/// not strictly ascending (a repeated group), buckets not sorted by source rank, a move,
/// reduce copy or reduction whose byte range (offset + (count - 1) * stride + length, every
/// side) or byte count overflows 64 bits, a zstd frame that does not declare the header's
/// body size (checked before the body is allocated).
Result<TransferPlan> DeserializePlan(std::span<const std::byte> bytes);

}  // namespace shardwire
