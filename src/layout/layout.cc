#include "shardwire/layout.h"

#include <algorithm>

#include <fmt/format.h>

namespace shardwire {

const ShardRef* RankShards::Find(std::uint32_t tensor) const {
  // Shards are sorted by tensor index.
  std::size_t lo = 0, hi = shards.size();
  while (lo < hi) {
    const std::size_t mid = (lo + hi) / 2;
    if (shards[mid].tensor < tensor) lo = mid + 1; else hi = mid;
  }
  return lo < shards.size() && shards[lo].tensor == tensor ? &shards[lo] : nullptr;
}

Result<Layout> Layout::FromShards(std::string description, std::vector<TensorSpec> tensors,
                                  const std::vector<std::vector<std::optional<LocalShard>>>& shards,
                                  const LayoutOptions& options) {
  if (shards.empty()) return InvalidArgument("layout " + description + " has zero ranks");
  const std::uint64_t alignment = options.alignment;
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return InvalidArgument(fmt::format("alignment {} is not a power of two", alignment));
  }
  // Placement order: tensor order, except that a fused group sits where its first part is.
  std::vector<std::int64_t> group_of(tensors.size(), -1);
  for (std::size_t g = 0; g < options.fused_groups.size(); ++g) {
    for (std::uint32_t t : options.fused_groups[g]) {
      if (t >= tensors.size() || group_of[t] >= 0) {
        return InvalidArgument(fmt::format("layout {}: tensor index {} is out of range or in two fused groups",
                                           description, t));
      }
      group_of[t] = static_cast<std::int64_t>(g);
    }
  }
  std::vector<std::vector<std::uint32_t>> units;  // each unit starts aligned
  std::vector<bool> placed(tensors.size(), false);
  for (std::uint32_t t = 0; t < tensors.size(); ++t) {
    if (placed[t]) continue;
    if (group_of[t] < 0) {
      units.push_back({t});
      placed[t] = true;
      continue;
    }
    units.push_back(options.fused_groups[static_cast<std::size_t>(group_of[t])]);
    for (std::uint32_t p : units.back()) placed[p] = true;
  }

  Layout layout;
  layout.ranks_.resize(shards.size());
  for (std::size_t r = 0; r < shards.size(); ++r) {
    if (shards[r].size() != tensors.size()) {
      return InvalidArgument(fmt::format("layout {}: rank {} lists {} shards for {} tensors", description, r,
                                         shards[r].size(), tensors.size()));
    }
    RankShards& rank = layout.ranks_[r];
    std::uint64_t offset = 0;
    for (const auto& unit : units) {
      offset = (offset + alignment - 1) & ~(alignment - 1);
      for (std::uint32_t t : unit) {
        if (!shards[r][t] || shards[r][t]->box.numel() == 0) continue;
        const LocalShard& local = *shards[r][t];
        const Box& box = local.box;
        const TensorSpec& spec = tensors[t];
        if (box.shape.size() != spec.shape.size() || box.offset.size() != spec.shape.size()) {
          return InvalidArgument(fmt::format("layout {}: rank {} box {} has the wrong rank for {}", description, r,
                                             ToString(box), ToString(spec)));
        }
        for (std::size_t d = 0; d < spec.shape.size(); ++d) {
          if (box.offset[d] < 0 || box.shape[d] < 0 || box.offset[d] + box.shape[d] > spec.shape[d]) {
            return InvalidArgument(fmt::format("layout {}: rank {} box {} lies outside {}", description, r,
                                               ToString(box), ToString(spec)));
          }
        }
        const std::uint64_t bytes = static_cast<std::uint64_t>(box.numel()) * DTypeSize(spec.dtype);
        if (local.reserved_bytes != 0 && local.reserved_bytes < bytes) {
          return InvalidArgument(fmt::format("layout {}: rank {} reserves {} bytes for {} of {} bytes", description,
                                             r, local.reserved_bytes, spec.name, bytes));
        }
        rank.shards.push_back(ShardRef{t, box, offset, local.partial_group});
        offset += std::max(bytes, local.reserved_bytes);
      }
    }
    // Shards are looked up by tensor index: keep them sorted by it.
    std::sort(rank.shards.begin(), rank.shards.end(),
              [](const ShardRef& a, const ShardRef& b) { return a.tensor < b.tensor; });
    rank.buffer_bytes = offset;
  }
  layout.description_ = std::move(description);
  layout.tensors_ = std::move(tensors);
  return layout;
}

Result<std::uint32_t> Layout::TensorIndex(const std::string& name) const {
  for (std::uint32_t t = 0; t < tensors_.size(); ++t) {
    if (tensors_[t].name == name) return t;
  }
  return NotFound(fmt::format("tensor {} is not in layout {}", name, description_));
}

std::vector<std::pair<std::int64_t, std::int64_t>> ChunkRanges(std::int64_t extent, int parts) {
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
  const std::int64_t chunk = parts > 0 ? (extent + parts - 1) / parts : 0;
  for (int i = 0; i < parts; ++i) {
    const std::int64_t begin = std::min(extent, chunk * i);
    const std::int64_t end = std::min(extent, chunk * (i + 1));
    ranges.emplace_back(begin, end);
  }
  return ranges;
}

Result<Layout> MakeFsdpLayout(std::vector<TensorSpec> tensors, int num_ranks) {
  if (num_ranks < 1) return InvalidArgument(fmt::format("FSDP needs at least 1 rank, got {}", num_ranks));
  std::vector<std::vector<std::optional<LocalShard>>> boxes(static_cast<std::size_t>(num_ranks));
  for (const TensorSpec& spec : tensors) {
    if (spec.shape.empty()) {
      for (int r = 0; r < num_ranks; ++r) {
        boxes[static_cast<std::size_t>(r)].push_back(r == 0 ? std::optional<LocalShard>(WholeBox(spec.shape)) : std::nullopt);
      }
      continue;
    }
    const auto ranges = ChunkRanges(spec.shape[0], num_ranks);
    for (int r = 0; r < num_ranks; ++r) {
      Box box = WholeBox(spec.shape);
      box.offset[0] = ranges[static_cast<std::size_t>(r)].first;
      box.shape[0] = ranges[static_cast<std::size_t>(r)].second - ranges[static_cast<std::size_t>(r)].first;
      boxes[static_cast<std::size_t>(r)].push_back(std::move(box));
    }
  }
  return Layout::FromShards(fmt::format("fsdp={}", num_ranks), std::move(tensors), boxes);
}

Result<Layout> MakeTpLayout(std::vector<TensorSpec> tensors, const std::vector<int>& shard_dims,
                            int tp, int replicas) {
  if (tp < 1 || replicas < 1) {
    return InvalidArgument(fmt::format("TP size {} and replica count {} must both be >= 1", tp, replicas));
  }
  if (shard_dims.size() != tensors.size()) {
    return InvalidArgument(fmt::format("{} shard dims given for {} tensors", shard_dims.size(), tensors.size()));
  }
  const int world = tp * replicas;
  std::vector<std::vector<std::optional<LocalShard>>> boxes(static_cast<std::size_t>(world));
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const TensorSpec& spec = tensors[t];
    const int dim = shard_dims[t];
    if (dim >= static_cast<int>(spec.shape.size())) {
      return InvalidArgument(fmt::format("{}: shard dim {} out of range", ToString(spec), dim));
    }
    if (dim >= 0 && spec.shape[static_cast<std::size_t>(dim)] % tp != 0) {
      return InvalidArgument(fmt::format("{}: dim {} of size {} is not divisible by TP size {}",
                                         ToString(spec), dim, spec.shape[static_cast<std::size_t>(dim)], tp));
    }
    for (int r = 0; r < world; ++r) {
      Box box = WholeBox(spec.shape);
      if (dim >= 0) {
        const auto d = static_cast<std::size_t>(dim);
        const std::int64_t part = spec.shape[d] / tp;
        box.offset[d] = part * (r % tp);
        box.shape[d] = part;
      }
      boxes[static_cast<std::size_t>(r)].push_back(std::move(box));
    }
  }
  std::string description = fmt::format("tp={}", tp);
  if (replicas > 1) description += fmt::format(",dp={}", replicas);
  return Layout::FromShards(std::move(description), std::move(tensors), boxes);
}

}  // namespace shardwire
