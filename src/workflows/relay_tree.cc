#include "workflows/relay_tree.h"

#include <algorithm>
#include <map>

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
  const std::size_t fan_out = static_cast<std::size_t>(std::max(k, 1));
  for (const std::vector<int>& g : groups) {
    for (std::size_t i = 1; i < g.size(); ++i) {
      const int parent = g[(i - 1) / fan_out];
      tree.parent[static_cast<std::size_t>(g[i])] = parent;
      tree.children[static_cast<std::size_t>(parent)].push_back(g[i]);
    }
  }
  return tree;
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
