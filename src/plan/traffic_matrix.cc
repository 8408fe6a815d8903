#include "shardwire/traffic_matrix.h"

#include <algorithm>

namespace shardwire {

TrafficMatrix ComputeTrafficMatrix(const TransferPlan& plan, int max_rows, int max_cols) {
  TrafficMatrix m;
  m.src_world = plan.src_world();
  m.dst_world = plan.dst_world();
  max_rows = std::max(max_rows, 1);
  max_cols = std::max(max_cols, 1);
  m.src_block = std::max(1, (m.src_world + max_rows - 1) / max_rows);
  m.dst_block = std::max(1, (m.dst_world + max_cols - 1) / max_cols);
  m.rows = (m.src_world + m.src_block - 1) / m.src_block;
  m.cols = (m.dst_world + m.dst_block - 1) / m.dst_block;
  m.bytes.assign(static_cast<std::size_t>(m.rows) * static_cast<std::size_t>(m.cols), 0);
  for (const Bucket& b : plan.buckets()) {
    const std::size_t row = b.src_rank / static_cast<std::uint32_t>(m.src_block);
    for (std::uint32_t d : plan.dst_groups()[b.dst_group]) {
      const std::size_t col = d / static_cast<std::uint32_t>(m.dst_block);
      m.bytes[row * static_cast<std::size_t>(m.cols) + col] += b.bytes;
    }
  }
  return m;
}

}  // namespace shardwire
