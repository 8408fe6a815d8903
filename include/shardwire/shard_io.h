// Copying shards between a full tensor and a rank's shard buffer.
//
// Thread-safety: pure functions; distinct output buffers may be filled concurrently.
#pragma once

#include <cstddef>
#include <span>

#include "shardwire/checkpoint.h"
#include "shardwire/layout.h"
#include "shardwire/status.h"

namespace shardwire {

/// Copies `box` of a full row-major tensor (`full`, spec.nbytes() bytes) into `out`
/// (box.numel() * dtype size bytes, dense row-major). Uses maximal contiguous runs.
void CopyBoxFromTensor(const TensorSpec& spec, std::span<const std::byte> full, const Box& box,
                       std::span<std::byte> out);

/// Fills `buffer` (layout.rank(rank).buffer_bytes bytes) with the rank's shards read
/// from `checkpoint`, tensor by tensor, straight from the mmap'd file (one copy).
/// Errors: kNotFound when the checkpoint lacks a layout tensor; kLayoutMismatch when
/// its shape or dtype differs (names the tensor); kInvalidArgument for a buffer of
/// the wrong size.
Status LoadShardsFromCheckpoint(const Checkpoint& checkpoint, const Layout& layout, int rank,
                                std::span<std::byte> buffer);

}  // namespace shardwire
