// Dividing a transfer's slices among lanes (lane_division.h).
#include "transport/lane_division.h"

#include <algorithm>

namespace shardwire::transport {

std::uint64_t OneLaneMaxBytes(std::uint64_t slice_bytes) { return slice_bytes / 2; }

std::vector<std::uint32_t> DivideAmongLanes(std::span<const std::uint64_t> slice_bytes,
                                            std::uint64_t one_lane_max_bytes, std::uint32_t lanes,
                                            std::uint64_t transfer_id) {
  std::uint64_t total = 0;
  for (std::uint64_t b : slice_bytes) total += b;
  std::vector<std::uint32_t> out(slice_bytes.size(), 0);
  if (total <= one_lane_max_bytes) {
    const auto lane = static_cast<std::uint32_t>(transfer_id % lanes);
    for (auto& l : out) l = lane;
    return out;
  }
  std::uint32_t lane = 0;
  std::uint64_t acc = 0;
  const std::uint64_t share = (total + lanes - 1) / lanes;
  for (std::size_t i = 0; i < slice_bytes.size(); ++i) {
    if (lane + 1 < lanes && acc >= share * (lane + 1)) ++lane;
    out[i] = lane;
    acc += slice_bytes[i];
  }
  if (lane == 0) {
    // Nothing to divide (one slice, or the first slices too small to fill a share
    // before the last): the lane of the transfer's id, as for a small transfer.
    const auto own = static_cast<std::uint32_t>(transfer_id % lanes);
    for (auto& l : out) l = own;
  }
  return out;
}

bool AnyRangesOverlap(std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges) {
  std::erase_if(ranges, [](const auto& r) { return r.second <= r.first; });
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) return true;
  }
  return false;
}

}  // namespace shardwire::transport
