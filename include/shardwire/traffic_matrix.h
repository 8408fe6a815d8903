// Traffic matrix of a transfer plan: bytes each source rank sends to each destination
// rank, optionally aggregated over blocks of consecutive ranks (for pictures of big
// layouts, e.g. 256 x 128 ranks drawn as at most 256 x 256 cells).
//
// Thread-safety: pure function; the result is a value.
#pragma once

#include <cstdint>
#include <vector>

#include "shardwire/transfer_plan.h"

namespace shardwire {

/// Bytes from source-rank blocks (rows) to destination-rank blocks (columns).
struct TrafficMatrix {
  int src_world = 0;  ///< source ranks
  int dst_world = 0;  ///< destination ranks
  int src_block = 1;  ///< source ranks per row: row i is ranks [i * src_block, (i + 1) * src_block)
  int dst_block = 1;  ///< destination ranks per column
  int rows = 0;       ///< ceil(src_world / src_block)
  int cols = 0;       ///< ceil(dst_world / dst_block)
  /// rows x cols, row-major: bytes delivered (a BROADCAST bucket counts once per member of
  /// its destination group; LOCAL buckets are included).
  std::vector<std::uint64_t> bytes;

  /// Bytes of cell (row, col). Precondition: 0 <= row < rows, 0 <= col < cols.
  std::uint64_t at(int row, int col) const {
    return bytes[static_cast<std::size_t>(row) * static_cast<std::size_t>(cols) + static_cast<std::size_t>(col)];
  }
};

/// The plan's traffic matrix with at most `max_rows` x `max_cols` cells: block sizes are
/// the smallest that fit (ceil(world / max)). max_rows and max_cols below 1 count as 1.
/// The sum of all cells equals plan.total_bytes().
TrafficMatrix ComputeTrafficMatrix(const TransferPlan& plan, int max_rows = 1 << 30, int max_cols = 1 << 30);

}  // namespace shardwire
