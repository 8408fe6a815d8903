#include "shardwire/planner.h"

#include <algorithm>
#include <map>
#include <tuple>

#include <fmt/format.h>

#include "plan/schedule.h"

namespace shardwire {
namespace {

constexpr std::size_t kListedDifferences = 5;
// Pieces at least this large are split over the replicas that hold them (kSpread), so
// that replicas share the sending evenly even when pieces are few and large.
constexpr std::uint64_t kSplitPieceBytes = 64ull << 10;

// Matches dst tensors to src tensors by name; returns src index per dst tensor.
Result<std::vector<std::uint32_t>> MatchTensors(const Layout& src, const Layout& dst) {
  std::map<std::string_view, std::uint32_t> by_name;
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
      differences.push_back(fmt::format("{}: source {}{} vs destination {}{}", d.name, DTypeName(s.dtype),
                                        ShapeToString(s.shape), DTypeName(d.dtype), ShapeToString(d.shape)));
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

// A rank class holding a shard of the tensor being planned.
struct Holder {
  std::uint32_t rank_class;
  const ShardRef* shard;
};

bool BoxLess(const Box& a, const Box& b) {
  return std::lexicographical_compare(a.offset.begin(), a.offset.end(), b.offset.begin(), b.offset.end()) ||
         (a.offset == b.offset &&
          std::lexicographical_compare(a.shape.begin(), a.shape.end(), b.shape.begin(), b.shape.end()));
}

// Splits holders (sorted) into runs of equal keys.
template <typename Equal>
std::vector<std::vector<Holder>> Classes(const std::vector<Holder>& holders, Equal equal) {
  std::vector<std::vector<Holder>> classes;
  for (const Holder& h : holders) {
    if (classes.empty() || !equal(classes.back().front(), h)) classes.emplace_back();
    classes.back().push_back(h);
  }
  return classes;
}

// A source rank able to send a piece: the rank and its shard.
struct Candidate {
  std::uint32_t rank;
  const ShardRef* shard;
};

// Destination groups, keyed by (ranks, local?).
class GroupRegistry {
 public:
  std::uint32_t Id(const std::vector<std::uint32_t>& ranks, bool local) {
    auto [it, inserted] = ids_.try_emplace({ranks, local}, static_cast<std::uint32_t>(groups_.size()));
    if (inserted) {
      groups_.push_back(ranks);
      local_.push_back(local);
    }
    return it->second;
  }
  std::vector<std::vector<std::uint32_t>> TakeGroups() { return std::move(groups_); }
  const std::vector<bool>& local() const { return local_; }

 private:
  std::map<std::pair<std::vector<std::uint32_t>, bool>, std::uint32_t> ids_;
  std::vector<std::vector<std::uint32_t>> groups_;
  std::vector<bool> local_;
};

Status CheckOptions(const Layout& src, const Layout& dst, const PlanOptions& o) {
  if (o.bucket_bytes == 0) return InvalidArgument("bucket_bytes must be > 0");
  if (o.max_concurrency < 1) return InvalidArgument(fmt::format("max_concurrency {} must be >= 1", o.max_concurrency));
  if (!o.src_process.empty() && o.src_process.size() != static_cast<std::size_t>(src.world_size())) {
    return InvalidArgument(fmt::format("src_process lists {} ranks, layout {} has {}", o.src_process.size(),
                                       src.description(), src.world_size()));
  }
  if (!o.dst_process.empty() && o.dst_process.size() != static_cast<std::size_t>(dst.world_size())) {
    return InvalidArgument(fmt::format("dst_process lists {} ranks, layout {} has {}", o.dst_process.size(),
                                       dst.description(), dst.world_size()));
  }
  if (o.src_process.empty() != o.dst_process.empty()) {
    return InvalidArgument("src_process and dst_process must be given together");
  }
  return Status::Ok();
}

// Splits `piece` on its first dimension with more than one element into up to `parts`
// nearly equal boxes (torch.chunk ranges).
std::vector<Box> SplitPiece(const Box& piece, std::size_t parts) {
  for (std::size_t d = 0; d < piece.shape.size(); ++d) {
    if (piece.shape[d] < 2) continue;
    std::vector<Box> out;
    for (const auto& [begin, end] :
         ChunkRanges(piece.shape[d],
                     static_cast<int>(std::min<std::int64_t>(piece.shape[d], static_cast<std::int64_t>(parts))))) {
      if (end <= begin) continue;
      Box b = piece;
      b.offset[d] += begin;
      b.shape[d] = end - begin;
      out.push_back(b);
    }
    return out;
  }
  return {piece};
}

}  // namespace

Result<TransferPlan> PlanTransfer(const Layout& src, const Layout& dst, const PlanOptions& options) {
  SW_RETURN_IF_ERROR(CheckOptions(src, dst, options));
  SW_ASSIGN_OR_RETURN(const std::vector<std::uint32_t> match, MatchTensors(src, dst));

  // Work on rank classes (replicas share shards), never on rank x tensor.
  std::vector<std::vector<Holder>> src_holders(src.tensors().size()), dst_holders(dst.tensors().size());
  for (std::uint32_t c = 0; c < src.num_rank_classes(); ++c) {
    for (const ShardRef& s : src.rank_class(c).shards) src_holders[s.tensor].push_back({c, &s});
  }
  for (std::uint32_t c = 0; c < dst.num_rank_classes(); ++c) {
    for (const ShardRef& s : dst.rank_class(c).shards) {
      if (s.partial_group != 0) {
        return InvalidArgument(
            fmt::format("rank {} of destination layout {} wants a Partial addend of {}: a "
                        "destination must receive reduced values",
                        dst.ranks_of_class(c).front(), dst.description(), dst.tensors()[s.tensor].name));
      }
      dst_holders[s.tensor].push_back({c, &s});
    }
  }

  const bool by_process = !options.src_process.empty();
  GroupRegistry groups;
  std::vector<std::uint64_t> load(static_cast<std::size_t>(src.world_size()), 0);
  // Reductions of Partial sources (see Reduction in transfer_plan.h).
  std::vector<ReduceCopy> reduce_copies;
  std::vector<Reduction> reductions;
  std::vector<std::uint64_t> scratch(static_cast<std::size_t>(src.world_size()), 0);
  // Runs per source rank: they mostly arrive in source-offset order already, so sorting
  // per source is cheap.
  std::vector<std::vector<Move>> runs_by_source(static_cast<std::size_t>(src.world_size()));
  std::uint64_t run_count = 0;
  for (std::uint32_t t = 0; t < dst.tensors().size(); ++t) {
    const std::uint32_t st = match[t];
    const std::uint64_t esize = DTypeSize(dst.tensors()[t].dtype);
    auto order = [](const Holder& a, const Holder& b) {
      if (BoxLess(a.shard->box, b.shard->box)) return true;
      if (BoxLess(b.shard->box, a.shard->box)) return false;
      return std::tie(a.shard->byte_offset, a.rank_class) < std::tie(b.shard->byte_offset, b.rank_class);
    };
    std::sort(dst_holders[t].begin(), dst_holders[t].end(), order);
    std::sort(src_holders[st].begin(), src_holders[st].end(), order);
    const auto dst_classes = Classes(dst_holders[t], [](const Holder& a, const Holder& b) {
      return a.shard->box == b.shard->box && a.shard->byte_offset == b.shard->byte_offset;
    });
    const auto src_classes =
        Classes(src_holders[st], [](const Holder& a, const Holder& b) { return a.shard->box == b.shard->box; });

    for (const auto& dclass : dst_classes) {
      const Box& dbox = dclass.front().shard->box;
      const std::uint64_t doff = dclass.front().shard->byte_offset;
      std::vector<std::uint32_t> dranks;
      for (const Holder& h : dclass) {
        const auto& ranks = dst.ranks_of_class(h.rank_class);
        dranks.insert(dranks.end(), ranks.begin(), ranks.end());
      }
      std::sort(dranks.begin(), dranks.end());

      // Destination groups of this class per source process: the ranks in the source's
      // process (LOCAL) and the others. Without a process map: one remote group.
      std::map<int, std::pair<std::int64_t, std::int64_t>> gid_cache;
      auto group_ids = [&](std::uint32_t src_rank) -> std::pair<std::int64_t, std::int64_t> {
        const int process = by_process ? options.src_process[src_rank] : -1;
        auto [it, inserted] = gid_cache.try_emplace(process, -1, -1);
        if (inserted) {
          std::vector<std::uint32_t> local, remote;
          for (std::uint32_t d : dranks)
            (by_process && options.dst_process[d] == process ? local : remote).push_back(d);
          if (!local.empty()) it->second.first = groups.Id(local, true);
          if (!remote.empty()) it->second.second = groups.Id(remote, false);
        }
        return it->second;
      };

      auto emit = [&](const Candidate& from, const Box& piece) {
        const auto [local_gid, remote_gid] = group_ids(from.rank);
        for (const std::int64_t g : {local_gid, remote_gid}) {
          if (g < 0) continue;
          const auto gid = static_cast<std::uint32_t>(g);
          std::vector<Move>& out = runs_by_source[from.rank];
          ForEachStridedRun(piece, from.shard->box, dbox, [&](const StridedRun& r) {
            Move m;
            m.src_rank = from.rank;
            m.dst_group = gid;
            m.src_offset = from.shard->byte_offset + static_cast<std::uint64_t>(r.from_element) * esize;
            m.dst_offset = doff + static_cast<std::uint64_t>(r.to_element) * esize;
            m.length = static_cast<std::uint64_t>(r.elements) * esize;
            m.count = static_cast<std::uint64_t>(r.count);
            m.src_stride = static_cast<std::uint64_t>(r.from_stride) * esize;
            m.dst_stride = static_cast<std::uint64_t>(r.to_stride) * esize;
            run_count += m.count;
            out.push_back(m);
          });
        }
        load[from.rank] += static_cast<std::uint64_t>(piece.numel()) * esize * dranks.size();
      };
      auto choose = [&](const std::vector<Candidate>& candidates) -> const Candidate& {
        if (options.replica_policy == ReplicaPolicy::kFirstReplica) return candidates.front();  // lowest rank
        return *std::min_element(candidates.begin(), candidates.end(), [&](const Candidate& a, const Candidate& b) {
          return std::tie(load[a.rank], a.rank) < std::tie(load[b.rank], b.rank);
        });
      };

      // A piece held as Partial(sum) addends: choose the sum group (replicas of the sum)
      // and its reducer by load, copy every addend into the reducer's scratch slots, sum
      // there, and send the sum (see Reduction).
      auto reduce = [&](const std::map<std::uint32_t, std::vector<Candidate>>& sum_groups, const Box& piece) {
        const std::vector<Candidate>* group = nullptr;
        const Candidate* reducer = nullptr;
        for (const auto& [id, members] : sum_groups) {
          for (const Candidate& c : members) {
            bool better = reducer == nullptr;
            if (!better && options.replica_policy == ReplicaPolicy::kSpread) {
              better = std::tie(load[c.rank], c.rank) < std::tie(load[reducer->rank], reducer->rank);
            } else if (!better) {
              better = c.rank < reducer->rank;
            }
            if (better) {
              reducer = &c;
              group = &members;
            }
          }
        }
        const std::uint64_t piece_bytes = static_cast<std::uint64_t>(piece.numel()) * esize;
        std::uint64_t& used = scratch[reducer->rank];
        const std::uint64_t slot0 = (used + 63) & ~std::uint64_t{63};
        used = slot0 + piece_bytes * group->size();
        for (std::size_t k = 0; k < group->size(); ++k) {
          const Candidate& member = (*group)[k];
          ForEachStridedRun(piece, member.shard->box, piece, [&](const StridedRun& r) {
            reduce_copies.push_back(ReduceCopy{
                reducer->rank, member.rank,
                member.shard->byte_offset + static_cast<std::uint64_t>(r.from_element) * esize,
                slot0 + k * piece_bytes + static_cast<std::uint64_t>(r.to_element) * esize,
                static_cast<std::uint64_t>(r.elements) * esize, static_cast<std::uint64_t>(r.count),
                static_cast<std::uint64_t>(r.from_stride) * esize, static_cast<std::uint64_t>(r.to_stride) * esize});
          });
          if (member.rank != reducer->rank) load[member.rank] += piece_bytes;
        }
        reductions.push_back(Reduction{reducer->rank, slot0, piece_bytes, static_cast<std::uint32_t>(group->size()),
                                       static_cast<std::uint8_t>(dst.tensors()[t].dtype)});
        // The sum sits in slot 0 as a dense box, addressed after the reducer's buffer.
        const ShardRef sum{st, piece, src.rank(static_cast<int>(reducer->rank)).buffer_bytes + slot0, 0};
        emit(Candidate{reducer->rank, &sum}, piece);
      };

      std::vector<Box> remaining{dbox};
      std::vector<std::optional<Box>> haves;
      std::vector<Candidate> candidates;
      for (const auto& sclass : src_classes) {
        if (remaining.empty()) break;
        const Box& sbox = sclass.front().shard->box;
        // Source classes are sorted by box offset: once one starts past the wanted range
        // on dim 0, none of the rest can intersect it.
        if (!dbox.shape.empty()) {
          if (sbox.offset[0] >= dbox.offset[0] + dbox.shape[0]) break;
          if (sbox.offset[0] + sbox.shape[0] <= dbox.offset[0]) continue;
        }
        haves.clear();
        for (const Box& want : remaining) haves.push_back(Intersect(want, sbox));
        if (std::none_of(haves.begin(), haves.end(), [](const auto& h) { return h.has_value(); })) continue;
        candidates.clear();
        std::map<std::uint32_t, std::vector<Candidate>> sum_groups;  // Partial(sum) addends by group
        for (const Holder& h : sclass) {
          for (std::uint32_t r : src.ranks_of_class(h.rank_class)) {
            if (h.shard->partial_group != 0) {
              sum_groups[h.shard->partial_group].push_back({r, h.shard});
            } else {
              candidates.push_back({r, h.shard});
            }
          }
        }
        if (!candidates.empty() && !sum_groups.empty()) {
          return InvalidArgument(fmt::format("layout {} holds box {} of {} both as values and as Partial addends",
                                             src.description(), ToString(sbox), src.tensors()[st].name));
        }
        std::sort(candidates.begin(), candidates.end(),
                  [](const Candidate& a, const Candidate& b) { return a.rank < b.rank; });
        for (auto& [id, members] : sum_groups) {
          std::sort(members.begin(), members.end(),
                    [](const Candidate& a, const Candidate& b) { return a.rank < b.rank; });
        }
        std::vector<Box> next;
        for (std::size_t w = 0; w < remaining.size(); ++w) {
          const Box& want = remaining[w];
          const std::optional<Box>& have = haves[w];
          if (!have) {
            next.push_back(want);
            continue;
          }
          if (!sum_groups.empty()) {
            reduce(sum_groups, *have);
            for (Box& rest : Subtract(want, *have)) next.push_back(std::move(rest));
            continue;
          }
          const bool split = options.replica_policy == ReplicaPolicy::kSpread && candidates.size() > 1 &&
                             static_cast<std::uint64_t>(have->numel()) * esize >= kSplitPieceBytes;
          for (const Box& piece : split ? SplitPiece(*have, candidates.size()) : std::vector<Box>{*have}) {
            emit(choose(candidates), piece);
          }
          for (Box& rest : Subtract(want, *have)) next.push_back(std::move(rest));
        }
        remaining = std::move(next);
      }
      if (!remaining.empty()) {
        return InvalidArgument(fmt::format("no rank of layout {} holds {} of {} needed by rank {} of layout {}",
                                           src.description(), ToString(remaining.front()), dst.tensors()[t].name,
                                           dranks.front(), dst.description()));
      }
    }
  }

  std::vector<Move> moves;
  std::size_t total_runs = 0;
  for (const std::vector<Move>& runs : runs_by_source) total_runs += runs.size();
  moves.reserve(total_runs);
  for (std::vector<Move>& runs : runs_by_source) {
    auto less = [](const Move& a, const Move& b) {
      return std::tie(a.dst_group, a.src_offset) < std::tie(b.dst_group, b.src_offset);
    };
    if (!std::is_sorted(runs.begin(), runs.end(), less)) std::stable_sort(runs.begin(), runs.end(), less);
  }
  for (const std::vector<Move>& runs : runs_by_source) {
    for (const Move& r : runs) {
      if (!moves.empty()) {
        Move& last = moves.back();
        if (last.count == 1 && r.count == 1 && last.src_rank == r.src_rank && last.dst_group == r.dst_group &&
            last.src_offset + last.length == r.src_offset && last.dst_offset + last.length == r.dst_offset) {
          last.length += r.length;
          continue;
        }
      }
      moves.push_back(r);
    }
  }
  runs_by_source = {};
  moves = CapMoveLength(std::move(moves), options.bucket_bytes);
  const std::vector<bool> local = groups.local();
  std::vector<std::vector<std::uint32_t>> dst_groups = groups.TakeGroups();
  std::vector<Bucket> buckets = MakeBuckets(moves, dst_groups, local, options.bucket_bytes);
  ScheduleRounds(buckets, dst_groups, src.world_size(), dst.world_size(), options.max_concurrency);
  TransferPlan plan(src.world_size(), dst.world_size(), std::move(dst_groups), std::move(moves), std::move(buckets),
                    run_count);
  if (!reductions.empty()) plan.SetReductions(std::move(reduce_copies), std::move(reductions), std::move(scratch));
  return plan;
}

}  // namespace shardwire
