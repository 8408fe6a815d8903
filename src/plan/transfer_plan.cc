#include "shardwire/transfer_plan.h"

#include <algorithm>

namespace shardwire {

std::string_view DeliveryKindName(DeliveryKind kind) {
  switch (kind) {
    case DeliveryKind::kLocal:
      return "LOCAL";
    case DeliveryKind::kP2P:
      return "P2P";
    case DeliveryKind::kBroadcast:
      return "BROADCAST";
  }
  return "?";
}

TransferPlan::TransferPlan(int src_world, int dst_world, std::vector<std::vector<std::uint32_t>> dst_groups,
                           std::vector<Move> moves, std::vector<Bucket> buckets, std::uint64_t runs_before_coalescing)
    : src_world_(src_world),
      dst_world_(dst_world),
      dst_groups_(std::move(dst_groups)),
      moves_(std::move(moves)),
      buckets_(std::move(buckets)),
      runs_before_coalescing_(runs_before_coalescing) {}

void TransferPlan::SetReductions(std::vector<ReduceCopy> copies, std::vector<Reduction> reductions,
                                 std::vector<std::uint64_t> scratch_bytes) {
  reduce_copies_ = std::move(copies);
  reductions_ = std::move(reductions);
  scratch_bytes_ = std::move(scratch_bytes);
}

std::uint64_t TransferPlan::scratch_bytes(int rank) const {
  return static_cast<std::size_t>(rank) < scratch_bytes_.size() ? scratch_bytes_[static_cast<std::size_t>(rank)] : 0;
}

std::uint32_t TransferPlan::rounds() const {
  std::uint32_t r = 0;
  for (const Bucket& b : buckets_) r = std::max(r, b.round + 1);
  return r;
}

std::uint64_t TransferPlan::total_bytes() const {
  std::uint64_t n = 0;
  for (const Move& m : moves_) n += m.bytes() * dst_groups_[m.dst_group].size();
  return n;
}

std::vector<Move> TransferPlan::MovesFrom(int src_rank) const {
  const auto src = static_cast<std::uint32_t>(src_rank);
  auto lo = std::partition_point(moves_.begin(), moves_.end(), [&](const Move& m) { return m.src_rank < src; });
  auto hi = std::partition_point(lo, moves_.end(), [&](const Move& m) { return m.src_rank <= src; });
  return {lo, hi};
}

std::vector<Move> TransferPlan::MovesTo(int dst_rank) const {
  std::vector<bool> member(dst_groups_.size(), false);
  for (std::size_t g = 0; g < dst_groups_.size(); ++g) {
    member[g] = std::binary_search(dst_groups_[g].begin(), dst_groups_[g].end(), static_cast<std::uint32_t>(dst_rank));
  }
  std::vector<Move> out;
  for (const Move& m : moves_) {
    if (member[m.dst_group]) out.push_back(m);
  }
  return out;
}

std::vector<int> TransferPlan::SourcesOf(int dst_rank) const {
  std::vector<int> out;
  for (const Move& m : MovesTo(dst_rank)) {
    if (out.empty() || out.back() != static_cast<int>(m.src_rank)) out.push_back(static_cast<int>(m.src_rank));
  }
  return out;
}

std::vector<std::uint64_t> TransferPlan::BytesSentPerSource() const {
  std::vector<std::uint64_t> sent(static_cast<std::size_t>(src_world_), 0);
  for (const Move& m : moves_) sent[m.src_rank] += m.bytes() * dst_groups_[m.dst_group].size();
  return sent;
}

std::vector<std::uint64_t> TransferPlan::BytesReceivedPerDestination() const {
  std::vector<std::uint64_t> per_group(dst_groups_.size(), 0);
  for (const Move& m : moves_) per_group[m.dst_group] += m.bytes();
  std::vector<std::uint64_t> received(static_cast<std::size_t>(dst_world_), 0);
  for (std::size_t g = 0; g < dst_groups_.size(); ++g) {
    for (std::uint32_t d : dst_groups_[g]) received[d] += per_group[g];
  }
  return received;
}

TrafficStats Summarize(std::span<const std::uint64_t> values) {
  TrafficStats s;
  if (values.empty()) return s;
  s.min = *std::min_element(values.begin(), values.end());
  s.max = *std::max_element(values.begin(), values.end());
  double sum = 0;
  for (auto v : values) sum += static_cast<double>(v);
  s.mean = sum / static_cast<double>(values.size());
  return s;
}

}  // namespace shardwire
