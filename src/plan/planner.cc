#include <algorithm>
#include <map>

#include <fmt/format.h>

#include "shardwire/transfer_plan.h"

namespace shardwire {
namespace {

constexpr std::size_t kListedDifferences = 5;

// Matches dst tensors to src tensors by name; returns src index per dst tensor.
Result<std::vector<std::uint32_t>> MatchTensors(const Layout& src, const Layout& dst) {
  std::map<std::string, std::uint32_t> by_name;
  for (std::uint32_t t = 0; t < src.tensors().size(); ++t) by_name[src.tensors()[t].name] = t;
  std::vector<std::uint32_t> match(dst.tensors().size());
  std::vector<std::string> differences;
  std::vector<bool> used(src.tensors().size(), false);
  for (std::uint32_t t = 0; t < dst.tensors().size(); ++t) {
    const TensorSpec& d = dst.tensors()[t];
    auto it = by_name.find(d.name);
    if (it == by_name.end()) {
      differences.push_back(fmt::format("{} is missing from the source", d.name));
      continue;
    }
    const TensorSpec& s = src.tensors()[it->second];
    used[it->second] = true;
    match[t] = it->second;
    if (s.shape != d.shape || s.dtype != d.dtype) {
      differences.push_back(fmt::format("{}: source {}{} vs destination {}{}", d.name,
                                        DTypeName(s.dtype), ShapeToString(s.shape),
                                        DTypeName(d.dtype), ShapeToString(d.shape)));
    }
  }
  for (std::uint32_t t = 0; t < src.tensors().size(); ++t) {
    if (!used[t]) differences.push_back(fmt::format("{} is missing from the destination", src.tensors()[t].name));
  }
  if (differences.empty()) return match;
  std::string listed;
  for (std::size_t i = 0; i < std::min(differences.size(), kListedDifferences); ++i) {
    listed += (i ? "; " : "") + differences[i];
  }
  return LayoutMismatch(fmt::format("layouts {} and {} differ in {} tensor(s): {}{}", src.description(),
                                    dst.description(), differences.size(), listed,
                                    differences.size() > kListedDifferences ? "; ..." : ""));
}

}  // namespace

TransferPlan::TransferPlan(int src_world, int dst_world, std::vector<Move> moves,
                           std::uint64_t runs_before_coalescing)
    : src_world_(src_world), dst_world_(dst_world), moves_(std::move(moves)),
      runs_before_coalescing_(runs_before_coalescing) {}

std::uint64_t TransferPlan::total_bytes() const {
  std::uint64_t n = 0;
  for (const Move& m : moves_) n += m.length;
  return n;
}

std::vector<Move> TransferPlan::MovesFrom(int src_rank) const {
  auto lo = std::partition_point(moves_.begin(), moves_.end(),
                                 [&](const Move& m) { return m.src_rank < static_cast<std::uint32_t>(src_rank); });
  auto hi = std::partition_point(lo, moves_.end(),
                                 [&](const Move& m) { return m.src_rank <= static_cast<std::uint32_t>(src_rank); });
  return {lo, hi};
}

std::vector<Move> TransferPlan::MovesTo(int dst_rank) const {
  std::vector<Move> out;
  for (const Move& m : moves_) {
    if (m.dst_rank == static_cast<std::uint32_t>(dst_rank)) out.push_back(m);
  }
  return out;
}

std::vector<int> TransferPlan::SourcesOf(int dst_rank) const {
  std::vector<int> out;
  for (const Move& m : moves_) {
    if (m.dst_rank == static_cast<std::uint32_t>(dst_rank) &&
        (out.empty() || out.back() != static_cast<int>(m.src_rank))) {
      out.push_back(static_cast<int>(m.src_rank));
    }
  }
  return out;
}

Result<TransferPlan> PlanTransfer(const Layout& src, const Layout& dst) {
  SW_ASSIGN_OR_RETURN(const std::vector<std::uint32_t> match, MatchTensors(src, dst));
  std::vector<Move> runs;
  const int src_world = src.world_size();
  for (int dr = 0; dr < dst.world_size(); ++dr) {
    for (const ShardRef& dshard : dst.rank(dr).shards) {
      const std::uint32_t st = match[dshard.tensor];
      const std::uint64_t esize = DTypeSize(dst.tensors()[dshard.tensor].dtype);
      // What of this destination shard is still unfilled; each source rank in a
      // rotated order takes what it holds of it.
      std::vector<Box> remaining{dshard.box};
      const int start = static_cast<int>((static_cast<std::uint64_t>(dr) + st) % static_cast<std::uint64_t>(src_world));
      for (int i = 0; i < src_world && !remaining.empty(); ++i) {
        const int sr = (start + i) % src_world;
        const ShardRef* sshard = src.rank(sr).Find(st);
        if (sshard == nullptr) continue;
        std::vector<Box> next;
        for (const Box& want : remaining) {
          auto have = Intersect(want, sshard->box);
          if (!have) {
            next.push_back(want);
            continue;
          }
          ForEachContiguousRun(*have, sshard->box, dshard.box,
                               [&](std::int64_t from, std::int64_t to, std::int64_t n) {
                                 runs.push_back(Move{static_cast<std::uint32_t>(sr), static_cast<std::uint32_t>(dr),
                                                     sshard->byte_offset + static_cast<std::uint64_t>(from) * esize,
                                                     dshard.byte_offset + static_cast<std::uint64_t>(to) * esize,
                                                     static_cast<std::uint64_t>(n) * esize});
                               });
          for (Box& piece : Subtract(want, *have)) next.push_back(std::move(piece));
        }
        remaining = std::move(next);
      }
      if (!remaining.empty()) {
        return InvalidArgument(fmt::format("no rank of layout {} holds {} of {} needed by rank {} of layout {}",
                                           src.description(), ToString(remaining.front()),
                                           dst.tensors()[dshard.tensor].name, dr, dst.description()));
      }
    }
  }
  const std::uint64_t run_count = runs.size();
  std::sort(runs.begin(), runs.end(), [](const Move& a, const Move& b) {
    return std::tie(a.src_rank, a.dst_rank, a.src_offset) < std::tie(b.src_rank, b.dst_rank, b.src_offset);
  });
  std::vector<Move> moves;
  for (const Move& r : runs) {
    if (!moves.empty()) {
      Move& last = moves.back();
      if (last.src_rank == r.src_rank && last.dst_rank == r.dst_rank &&
          last.src_offset + last.length == r.src_offset && last.dst_offset + last.length == r.dst_offset) {
        last.length += r.length;
        continue;
      }
    }
    moves.push_back(r);
  }
  return TransferPlan(src_world, dst.world_size(), std::move(moves), run_count);
}

}  // namespace shardwire
