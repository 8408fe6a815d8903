// Copying shards between a full tensor and a rank's shard buffer.
//
// Thread-safety: pure functions; distinct output buffers may be filled concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>

#include "shardwire/checkpoint.h"
#include "shardwire/layout.h"
#include "shardwire/status.h"

namespace shardwire {

/// Copies `box` of a full row-major tensor (`full`, spec.nbytes() bytes) into `out`
/// (box.numel() * dtype size bytes, dense row-major). Uses maximal contiguous runs.
/// Preconditions, not checked (callers validate): full.size() == spec.nbytes(), `box` inside
/// spec.shape, out.size() == box.numel() * DTypeSize(spec.dtype).
void CopyBoxFromTensor(const TensorSpec& spec, std::span<const std::byte> full, const Box& box,
                       std::span<std::byte> out);

/// A half-open byte range [begin, end) of a rank's shard buffer (bytes from its start).
struct BufferInterval {
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
  bool operator==(const BufferInterval&) const = default;
};

/// Bytes a checkpoint read copies or hashes between two calls of its interrupt hook
/// (64 MiB: ~5-10 ms from the page cache, well under a second from a slow disk).
inline constexpr std::uint64_t kInterruptCheckBytes = 64ull << 20;

/// What LoadShardsFromCheckpoint reads, and when it stops.
struct ShardReadOptions {
  /// Only these bytes of the buffer are written: sorted, disjoint, non-empty intervals
  /// inside the buffer (kInvalidArgument otherwise); every other byte is left as it was
  /// (a P2P load's disk fallback fills only what no source gave). nullopt: the whole rank.
  /// The span must stay valid during the call.
  std::optional<std::span<const BufferInterval>> only = std::nullopt;
  /// Asked before the first tensor and after about every kInterruptCheckBytes copied
  /// (from the calling thread); a non-OK Status stops the read at once and is returned
  /// as it is, with part of the bytes written (e.g. a Ctrl-C, or a load's deadline).
  /// Empty: never stops.
  std::function<Status()> interrupt = {};
};

/// Fills `buffer` (layout.rank(rank).buffer_bytes bytes) with the rank's shards read
/// from `checkpoint`, tensor by tensor, straight from the mmap'd file (one copy; pages
/// of the file that no wanted byte lies on are not touched).
/// Errors: kNotFound when the checkpoint lacks a layout tensor; kLayoutMismatch when
/// its shape or dtype differs (names the tensor); kInvalidArgument for a buffer of
/// the wrong size or bad `options.only`; whatever `options.interrupt` returned.
/// Every tensor of the rank is checked before any byte is written.
Status LoadShardsFromCheckpoint(const Checkpoint& checkpoint, const Layout& layout, int rank,
                                std::span<std::byte> buffer, const ShardReadOptions& options = {});

}  // namespace shardwire
