#include "shardwire/layout.h"

#include <algorithm>
#include <string_view>
#include <unordered_map>

#include <fmt/format.h>

#include "core/huge_page_memory.h"

namespace shardwire {

const ShardRef* RankShards::Find(std::uint32_t tensor) const {
  // Shards are sorted by tensor index.
  std::size_t lo = 0, hi = shards.size();
  while (lo < hi) {
    const std::size_t mid = (lo + hi) / 2;
    if (shards[mid].tensor < tensor)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < shards.size() && shards[lo].tensor == tensor ? &shards[lo] : nullptr;
}

Result<Layout> Layout::FromShards(std::string description, std::vector<TensorSpec> tensors,
                                  const std::vector<std::vector<std::optional<LocalShard>>>& shards,
                                  const LayoutOptions& options) {
  std::vector<std::vector<ShardEntry>> classes(shards.size());
  std::vector<std::uint32_t> class_of_rank(shards.size());
  for (std::size_t r = 0; r < shards.size(); ++r) {
    if (shards[r].size() != tensors.size()) {
      return InvalidArgument(fmt::format("layout {}: rank {} lists {} shards for {} tensors", description, r,
                                         shards[r].size(), tensors.size()));
    }
    class_of_rank[r] = static_cast<std::uint32_t>(r);
    for (std::uint32_t t = 0; t < tensors.size(); ++t) {
      if (shards[r][t]) classes[r].push_back(ShardEntry{t, *shards[r][t]});
    }
  }
  return FromRankClasses(std::move(description), std::move(tensors), std::move(classes), std::move(class_of_rank),
                         options);
}

Result<Layout> Layout::FromRankClasses(std::string description, std::vector<TensorSpec> tensors,
                                       std::vector<std::vector<ShardEntry>> class_shards,
                                       std::vector<std::uint32_t> class_of_rank, const LayoutOptions& options) {
  if (class_of_rank.empty()) return InvalidArgument("layout " + description + " has zero ranks");
  {
    // Tensors are matched by name (planner, P2P loading): a name listed twice would be matched
    // by position in one tensor order and fail as "missing" in another.
    std::unordered_map<std::string_view, std::uint32_t> index_of;
    index_of.reserve(tensors.size());
    for (std::uint32_t t = 0; t < tensors.size(); ++t) {
      const auto [it, inserted] = index_of.try_emplace(tensors[t].name, t);
      if (!inserted) {
        return InvalidArgument(fmt::format("layout {}: tensor name '{}' is listed twice (tensors {} and {})",
                                           description, tensors[t].name, it->second, t));
      }
    }
  }
  const std::uint64_t alignment = options.alignment;
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return InvalidArgument(fmt::format("alignment {} is not a power of two", alignment));
  }
  // Placement order: tensor order, except that a fused group sits where its first part is.
  std::vector<std::int64_t> group_of(tensors.size(), -1);
  for (std::size_t g = 0; g < options.fused_groups.size(); ++g) {
    for (std::uint32_t t : options.fused_groups[g]) {
      if (t >= tensors.size() || group_of[t] >= 0) {
        return InvalidArgument(
            fmt::format("layout {}: tensor index {} is out of range or in two fused groups", description, t));
      }
      group_of[t] = static_cast<std::int64_t>(g);
    }
  }
  // rank_in_placement[t]: position of tensor t in placement order; unit_start marks the
  // first tensor of each aligned unit (a lone tensor or a fused group).
  std::vector<std::uint32_t> placement_order;
  std::vector<bool> unit_start;
  {
    std::vector<bool> placed(tensors.size(), false);
    for (std::uint32_t t = 0; t < tensors.size(); ++t) {
      if (placed[t]) continue;
      const std::vector<std::uint32_t> unit =
          group_of[t] < 0 ? std::vector<std::uint32_t>{t} : options.fused_groups[static_cast<std::size_t>(group_of[t])];
      for (std::size_t i = 0; i < unit.size(); ++i) {
        placement_order.push_back(unit[i]);
        unit_start.push_back(i == 0);
        placed[unit[i]] = true;
      }
    }
  }
  std::vector<std::uint32_t> position(tensors.size());
  for (std::uint32_t i = 0; i < placement_order.size(); ++i) position[placement_order[i]] = i;

  Layout layout;
  layout.ranks_of_class_.resize(class_shards.size());
  for (std::size_t r = 0; r < class_of_rank.size(); ++r) {
    if (class_of_rank[r] >= class_shards.size()) {
      return InvalidArgument(fmt::format("layout {}: rank {} is in class {} of {}", description, r, class_of_rank[r],
                                         class_shards.size()));
    }
    layout.ranks_of_class_[class_of_rank[r]].push_back(static_cast<std::uint32_t>(r));
  }
  layout.classes_.resize(class_shards.size());
  for (std::size_t c = 0; c < class_shards.size(); ++c) {
    if (layout.ranks_of_class_[c].empty()) {
      return InvalidArgument(fmt::format("layout {}: rank class {} has no rank", description, c));
    }
    const std::uint32_t first_rank = layout.ranks_of_class_[c].front();
    std::vector<ShardEntry>& entries = class_shards[c];
    for (const ShardEntry& e : entries) {  // before the sort, which indexes position[] by them
      if (e.tensor >= tensors.size())
        return InvalidArgument(fmt::format("layout {}: tensor index {} out of range", description, e.tensor));
    }
    std::sort(entries.begin(), entries.end(),
              [&](const ShardEntry& a, const ShardEntry& b) { return position[a.tensor] < position[b.tensor]; });
    RankShards& rank = layout.classes_[c];
    rank.shards.reserve(entries.size());
    // In 2 MiB pages, advised before the first touch: up to 150 MB per layout for a 1T-parameter
    // model at tp=8 (core/huge_page_memory.h; MakeEngineLayout).
    AdviseHugePages(rank.shards.data(), entries.size() * sizeof(ShardRef));
    std::uint64_t offset = 0;
    std::uint32_t last_unit_position = 0;
    bool first = true;
    for (const ShardEntry& e : entries) {
      const std::uint32_t t = e.tensor;
      if (t >= tensors.size())
        return InvalidArgument(fmt::format("layout {}: tensor index {} out of range", description, t));
      const Box& box = e.shard.box;
      if (box.numel() == 0 && !(box.shape.empty() && tensors[t].shape.empty())) continue;
      const TensorSpec& spec = tensors[t];
      if (box.shape.size() != spec.shape.size() || box.offset.size() != spec.shape.size()) {
        return InvalidArgument(fmt::format("layout {}: rank {} box {} has the wrong rank for {}", description,
                                           first_rank, ToString(box), ToString(spec)));
      }
      for (std::size_t d = 0; d < spec.shape.size(); ++d) {
        if (box.offset[d] < 0 || box.shape[d] < 0 || box.offset[d] + box.shape[d] > spec.shape[d]) {
          return InvalidArgument(fmt::format("layout {}: rank {} box {} lies outside {}", description, first_rank,
                                             ToString(box), ToString(spec)));
        }
      }
      const std::uint64_t bytes = static_cast<std::uint64_t>(box.numel()) * DTypeSize(spec.dtype);
      if (e.shard.reserved_bytes != 0 && e.shard.reserved_bytes < bytes) {
        return InvalidArgument(fmt::format("layout {}: rank {} reserves {} bytes for {} of {} bytes", description,
                                           first_rank, e.shard.reserved_bytes, spec.name, bytes));
      }
      // A new aligned unit starts unless this shard continues the fused group of the last one.
      std::uint32_t unit_position = position[t];
      while (!unit_start[unit_position]) --unit_position;
      if (first || unit_position != last_unit_position) offset = (offset + alignment - 1) & ~(alignment - 1);
      first = false;
      last_unit_position = unit_position;
      rank.shards.push_back(ShardRef{t, box, offset, e.shard.partial_group});
      offset += std::max(bytes, e.shard.reserved_bytes);
    }
    // Shards are looked up by tensor index: keep them sorted by it.
    std::sort(rank.shards.begin(), rank.shards.end(),
              [](const ShardRef& a, const ShardRef& b) { return a.tensor < b.tensor; });
    for (std::size_t i = 1; i < rank.shards.size(); ++i) {
      if (rank.shards[i].tensor == rank.shards[i - 1].tensor) {
        return InvalidArgument(fmt::format("layout {}: rank {} holds two shards of {}", description, first_rank,
                                           tensors[rank.shards[i].tensor].name));
      }
    }
    rank.buffer_bytes = offset;
  }
  layout.class_of_rank_ = std::move(class_of_rank);
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

Result<Layout> Layout::Subset(const std::vector<std::uint32_t>& keep) const {
  constexpr std::uint32_t kDropped = ~std::uint32_t{0};
  std::vector<std::uint32_t> new_index(tensors_.size(), kDropped);
  for (std::uint32_t t : keep) {
    if (t >= tensors_.size() || new_index[t] != kDropped) {
      return InvalidArgument(
          fmt::format("layout {}: subset tensor index {} is out of range or listed twice", description_, t));
    }
    new_index[t] = 0;
  }
  Layout out;
  out.description_ = description_;
  for (std::uint32_t t = 0; t < tensors_.size(); ++t) {
    if (new_index[t] == kDropped) continue;
    new_index[t] = static_cast<std::uint32_t>(out.tensors_.size());
    out.tensors_.push_back(tensors_[t]);
  }
  out.classes_.reserve(classes_.size());
  for (const RankShards& rank : classes_) {
    RankShards kept;
    kept.buffer_bytes = rank.buffer_bytes;
    for (const ShardRef& s : rank.shards) {
      if (new_index[s.tensor] == kDropped) continue;
      ShardRef r = s;
      r.tensor = new_index[s.tensor];
      kept.shards.push_back(std::move(r));
    }
    out.classes_.push_back(std::move(kept));
  }
  out.class_of_rank_ = class_of_rank_;
  out.ranks_of_class_ = ranks_of_class_;
  return out;
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
  SW_RETURN_IF_ERROR(CheckTensorDims(tensors, fmt::format("layout fsdp={}", num_ranks)));
  std::vector<std::vector<std::optional<LocalShard>>> boxes(static_cast<std::size_t>(num_ranks));
  for (const TensorSpec& spec : tensors) {
    if (spec.shape.empty()) {
      for (int r = 0; r < num_ranks; ++r) {
        boxes[static_cast<std::size_t>(r)].push_back(r == 0 ? std::optional<LocalShard>(WholeBox(spec.shape))
                                                            : std::nullopt);
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

Result<Layout> MakeTpLayout(std::vector<TensorSpec> tensors, const std::vector<int>& shard_dims, int tp, int replicas) {
  if (tp < 1 || replicas < 1) {
    return InvalidArgument(fmt::format("TP size {} and replica count {} must both be >= 1", tp, replicas));
  }
  if (shard_dims.size() != tensors.size()) {
    return InvalidArgument(fmt::format("{} shard dims given for {} tensors", shard_dims.size(), tensors.size()));
  }
  SW_RETURN_IF_ERROR(CheckTensorDims(tensors, fmt::format("layout tp={}", tp)));
  // Replicas share shards: rank replica * tp + tp_rank is in class tp_rank.
  std::vector<std::vector<ShardEntry>> classes(static_cast<std::size_t>(tp));
  for (std::uint32_t t = 0; t < tensors.size(); ++t) {
    const TensorSpec& spec = tensors[t];
    const int dim = shard_dims[t];
    if (dim >= static_cast<int>(spec.shape.size())) {
      return InvalidArgument(fmt::format("{}: shard dim {} out of range", ToString(spec), dim));
    }
    if (dim >= 0 && spec.shape[static_cast<std::size_t>(dim)] % tp != 0) {
      return InvalidArgument(fmt::format("{}: dim {} of size {} is not divisible by TP size {}", ToString(spec), dim,
                                         spec.shape[static_cast<std::size_t>(dim)], tp));
    }
    for (int r = 0; r < tp; ++r) {
      Box box = WholeBox(spec.shape);
      if (dim >= 0) {
        const auto d = static_cast<std::size_t>(dim);
        const std::int64_t part = spec.shape[d] / tp;
        box.offset[d] = part * r;
        box.shape[d] = part;
      }
      classes[static_cast<std::size_t>(r)].push_back({t, LocalShard(std::move(box))});
    }
  }
  std::vector<std::uint32_t> class_of_rank(static_cast<std::size_t>(tp * replicas));
  for (std::size_t r = 0; r < class_of_rank.size(); ++r)
    class_of_rank[r] = static_cast<std::uint32_t>(r % static_cast<std::size_t>(tp));
  std::string description = fmt::format("tp={}", tp);
  if (replicas > 1) description += fmt::format(",dp={}", replicas);
  return Layout::FromRankClasses(std::move(description), std::move(tensors), std::move(classes),
                                 std::move(class_of_rank));
}

}  // namespace shardwire
