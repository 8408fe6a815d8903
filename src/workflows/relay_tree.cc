#include "workflows/relay_tree.h"

#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>

namespace shardwire::workflows {
namespace {

bool SameShards(const RankShards& a, const RankShards& b) {
  if (a.buffer_bytes != b.buffer_bytes || a.shards.size() != b.shards.size()) return false;
  for (std::size_t i = 0; i < a.shards.size(); ++i) {
    const ShardRef& x = a.shards[i];
    const ShardRef& y = b.shards[i];
    if (x.tensor != y.tensor || !(x.box == y.box) || x.byte_offset != y.byte_offset ||
        x.partial_group != y.partial_group) {
      return false;
    }
  }
  return true;
}

void AddWritten(const TransferPlan& plan, int rank, std::vector<ByteRange>& out) {
  for (const Move& m : plan.MovesTo(rank)) {
    for (std::uint64_t i = 0; i < m.count; ++i) out.push_back({m.dst_offset + i * m.dst_stride, m.length});
  }
}

}  // namespace

RelayTree MakeRelayTree(const Layout& engine, int k) {
  const auto world = static_cast<std::size_t>(engine.world_size());
  RelayTree tree{std::vector<int>(world, -1), std::vector<std::vector<int>>(world)};
  std::vector<std::vector<int>> groups;  // ranks with identical shards, ascending
  for (int r = 0; r < engine.world_size(); ++r) {
    auto same = std::find_if(groups.begin(), groups.end(), [&](const std::vector<int>& g) {
      return SameShards(engine.rank(g.front()), engine.rank(r));
    });
    if (same == groups.end()) {
      groups.push_back({r});
    } else {
      same->push_back(r);
    }
  }
  const std::size_t fan_out = static_cast<std::size_t>(std::clamp(k, 1, kMaxRelayFanout));
  for (const std::vector<int>& g : groups) {
    for (std::size_t i = 1; i < g.size(); ++i) {
      const int parent = g[(i - 1) / fan_out];
      tree.parent[static_cast<std::size_t>(g[i])] = parent;
      tree.children[static_cast<std::size_t>(parent)].push_back(g[i]);
    }
  }
  return tree;
}

int RelayDepth(const RelayTree& tree, int rank) {
  int depth = 0;
  for (int r = tree.parent[static_cast<std::size_t>(rank)]; r >= 0; r = tree.parent[static_cast<std::size_t>(r)])
    ++depth;  // ends: a parent is always an earlier rank of its group (heap order)
  return depth;
}

Status CheckRelayPlan(const RelayTree& tree, int rank, std::optional<std::uint32_t> relay_from,
                      std::span<const RelayTarget> relay_to) {
  const int parent = tree.parent[static_cast<std::size_t>(rank)];
  if (relay_from && (parent < 0 || *relay_from != static_cast<std::uint32_t>(parent))) {
    return CorruptData(
        fmt::format("it names engine rank {} as the relay parent of engine rank {}, whose parent in "
                    "the relay tree is {}",
                    *relay_from, rank, parent));
  }
  std::set<std::uint32_t> seen;
  for (const RelayTarget& t : relay_to) {
    if (t.rank >= tree.parent.size() || tree.parent[t.rank] != rank) {
      return CorruptData(
          fmt::format("it names engine rank {} as a relay child of engine rank {}, which is not its parent in the "
                      "relay tree",
                      t.rank, rank));
    }
    if (!seen.insert(t.rank).second)
      return CorruptData(fmt::format("it names relay child engine rank {} twice", t.rank));
  }
  return Status::Ok();
}

std::vector<ByteRange> WrittenRanges(const PushConversion& conversion, int rank) {
  std::vector<ByteRange> all;
  AddWritten(conversion.direct_plan(), rank, all);
  AddWritten(conversion.converted_plan(), rank, all);
  std::sort(all.begin(), all.end(), [](const ByteRange& a, const ByteRange& b) { return a.offset < b.offset; });
  std::vector<ByteRange> merged;
  for (const ByteRange& r : all) {
    if (r.length == 0) continue;
    if (!merged.empty() && r.offset <= merged.back().offset + merged.back().length) {
      const std::uint64_t end = std::max(merged.back().offset + merged.back().length, r.offset + r.length);
      merged.back().length = end - merged.back().offset;
    } else {
      merged.push_back(r);
    }
  }
  return merged;
}

}  // namespace shardwire::workflows
