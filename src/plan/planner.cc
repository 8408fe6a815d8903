#include "shardwire/planner.h"

#include <algorithm>
#include <compare>
#include <deque>
#include <map>
#include <memory_resource>
#include <span>
#include <tuple>
#include <unordered_map>

#include <fmt/format.h>

#include "core/huge_page_memory.h"
#include "plan/schedule.h"

namespace shardwire {
namespace {

constexpr std::size_t kListedDifferences = 5;
// Pieces at least this large are split over the replicas that hold them (kSpread), so
// that replicas share the sending evenly even when pieces are few and large.
constexpr std::uint64_t kSplitPieceBytes = 64ull << 10;

// Matches dst tensors to src tensors by name; returns src index per dst tensor.
Result<std::vector<std::uint32_t>> MatchTensors(const Layout& src, const Layout& dst) {
  const std::vector<TensorSpec>& sources = src.tensors();
  const std::vector<TensorSpec>& dests = dst.tensors();
  // Layouts of one model description list the same names in the same order: then the match is
  // the identity, found in one linear pass (140,000 names for Kimi-K2, whose ordered-map lookups
  // were a tenth of its plan time). Otherwise a hash map of the source names.
  const bool same_order = sources.size() == dests.size() &&
                          std::equal(sources.begin(), sources.end(), dests.begin(),
                                     [](const TensorSpec& a, const TensorSpec& b) { return a.name == b.name; });
  std::unordered_map<std::string_view, std::uint32_t> by_name;
  if (!same_order) {
    by_name.reserve(sources.size());
    for (std::uint32_t t = 0; t < sources.size(); ++t) by_name.insert_or_assign(sources[t].name, t);
  }
  std::vector<std::uint32_t> match(dests.size());
  std::vector<std::string> differences;
  std::vector<bool> used(sources.size(), false);
  for (std::uint32_t t = 0; t < dests.size(); ++t) {
    const TensorSpec& d = dests[t];
    std::uint32_t from = t;
    if (!same_order) {
      auto it = by_name.find(d.name);
      if (it == by_name.end()) {
        differences.push_back(fmt::format("{} is missing from the source", d.name));
        continue;
      }
      from = it->second;
    }
    const TensorSpec& s = sources[from];
    used[from] = true;
    match[t] = from;
    if (s.shape != d.shape || s.dtype != d.dtype) {
      differences.push_back(fmt::format("{}: source {}{} vs destination {}{}", d.name, DTypeName(s.dtype),
                                        ShapeToString(s.shape), DTypeName(d.dtype), ShapeToString(d.shape)));
    }
  }
  for (std::uint32_t t = 0; t < sources.size(); ++t) {
    if (!used[t]) differences.push_back(fmt::format("{} is missing from the destination", sources[t].name));
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

// Destination groups, keyed by (ranks, local?). Looked up about a million times for a
// 1T-parameter model, almost always finding an existing group, most often the one found last:
// that one is checked first, the lookup compares the caller's ranks in place (a transparent
// comparator), and they are copied only for a new group.
class GroupRegistry {
 public:
  GroupRegistry() = default;
  GroupRegistry(const GroupRegistry&) = delete;  // last_ points into this object's map
  GroupRegistry& operator=(const GroupRegistry&) = delete;

  std::uint32_t Id(const std::vector<std::uint32_t>& ranks, bool local) {
    if (last_ != ids_.end() && last_->first.second == local && last_->first.first == ranks) return last_->second;
    auto it = ids_.find(KeyView{ranks, local});
    if (it == ids_.end()) {
      it = ids_.emplace(Key{ranks, local}, static_cast<std::uint32_t>(groups_.size())).first;
      groups_.push_back(ranks);
      local_.push_back(local);
    }
    last_ = it;
    return it->second;
  }
  std::vector<std::vector<std::uint32_t>> TakeGroups() { return std::move(groups_); }
  const std::vector<bool>& local() const { return local_; }
  std::size_t size() const { return groups_.size(); }

 private:
  using Key = std::pair<std::vector<std::uint32_t>, bool>;
  struct KeyView {
    std::span<const std::uint32_t> ranks;
    bool local;
  };
  // (ranks, local) in the order std::pair's operator< gives Key.
  struct KeyLess {
    using is_transparent = void;
    static KeyView View(const Key& k) { return {k.first, k.second}; }
    static KeyView View(const KeyView& k) { return k; }
    template <typename A, typename B>
    bool operator()(const A& a, const B& b) const {
      const KeyView x = View(a), y = View(b);
      const auto order =
          std::lexicographical_compare_three_way(x.ranks.begin(), x.ranks.end(), y.ranks.begin(), y.ranks.end());
      return order != 0 ? order < 0 : x.local < y.local;
    }
  };
  std::map<Key, std::uint32_t, KeyLess> ids_;
  std::map<Key, std::uint32_t, KeyLess>::const_iterator last_ = ids_.end();  // std::map iterators stay valid
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

// One planning run: the state shared by all tensors (groups, per-source load, runs,
// reductions) and the steps of the algorithm in planner.h.
class Planner {
 public:
  Planner(const Layout& src, const Layout& dst, const PlanOptions& options)
      : src_(src),
        dst_(dst),
        options_(options),
        by_process_(!options.src_process.empty()),
        load_(static_cast<std::size_t>(src.world_size()), 0),
        scratch_(static_cast<std::size_t>(src.world_size()), 0) {
    runs_by_source_.reserve(static_cast<std::size_t>(src.world_size()));
    for (int r = 0; r < src.world_size(); ++r) runs_by_source_.emplace_back(&run_memory_);
  }

  Status Run(const std::vector<std::uint32_t>& match) {
    // Work on rank classes (replicas share shards), never on rank x tensor.
    std::vector<std::vector<Holder>> src_holders(src_.tensors().size()), dst_holders(dst_.tensors().size());
    for (std::uint32_t c = 0; c < src_.num_rank_classes(); ++c) {
      for (const ShardRef& s : src_.rank_class(c).shards) src_holders[s.tensor].push_back({c, &s});
    }
    for (std::uint32_t c = 0; c < dst_.num_rank_classes(); ++c) {
      for (const ShardRef& s : dst_.rank_class(c).shards) {
        if (s.partial_group != 0) {
          return InvalidArgument(
              fmt::format("rank {} of destination layout {} wants a Partial addend of {}: a "
                          "destination must receive reduced values",
                          dst_.ranks_of_class(c).front(), dst_.description(), dst_.tensors()[s.tensor].name));
        }
        dst_holders[s.tensor].push_back({c, &s});
      }
    }
    auto order = [](const Holder& a, const Holder& b) {
      if (BoxLess(a.shard->box, b.shard->box)) return true;
      if (BoxLess(b.shard->box, a.shard->box)) return false;
      return std::tie(a.shard->byte_offset, a.rank_class) < std::tie(b.shard->byte_offset, b.rank_class);
    };
    for (std::uint32_t t = 0; t < dst_.tensors().size(); ++t) {
      tensor_ = t;
      src_tensor_ = match[t];
      esize_ = DTypeSize(dst_.tensors()[t].dtype);
      std::sort(dst_holders[t].begin(), dst_holders[t].end(), order);
      std::sort(src_holders[src_tensor_].begin(), src_holders[src_tensor_].end(), order);
      const auto src_classes = Classes(src_holders[src_tensor_],
                                       [](const Holder& a, const Holder& b) { return a.shard->box == b.shard->box; });
      for (const auto& dclass : Classes(dst_holders[t], [](const Holder&a, const Holder&b) {
             return a.shard->box == b.shard->box && a.shard->byte_offset == b.shard->byte_offset;
           })) {
        SW_RETURN_IF_ERROR(FillDestinationClass(dclass, src_classes));
      }
    }
    return Status::Ok();
  }

  Result<TransferPlan> Finish() {
    std::vector<Move> moves = CoalescedMoves();
    SW_ASSIGN_OR_RETURN(moves, plan::CapMoveLength(std::move(moves), options_.bucket_bytes));
    const std::vector<bool> local = groups_.local();
    std::vector<std::vector<std::uint32_t>> dst_groups = groups_.TakeGroups();
    std::vector<Bucket> buckets = plan::MakeBuckets(moves, dst_groups, local, options_.bucket_bytes);
    plan::ScheduleRounds(buckets, dst_groups, src_.world_size(), dst_.world_size(), options_.max_concurrency);
    TransferPlan plan(src_.world_size(), dst_.world_size(), std::move(dst_groups), std::move(moves), std::move(buckets),
                      run_count_);
    if (!reductions_.empty()) {
      plan.SetReductions(std::move(reduce_copies_), std::move(reductions_), std::move(scratch_));
    }
    return plan;
  }

 private:
  // The destination ranks of one class: they hold `box` at `offset`.
  struct Destination {
    Box box;
    std::uint64_t offset = 0;
    std::vector<std::uint32_t> ranks;
    std::map<int, std::pair<std::int64_t, std::int64_t>> group_ids;  // source process -> (LOCAL, remote)
    std::optional<std::pair<std::int64_t, std::int64_t>> remote_ids;  // without a process map: (-1, remote)
  };

  // Step 3 for one destination class: take each source class's part of what is missing.
  // Called about a million times for a 1T-parameter model at tp=8, so its working vectors are
  // members, cleared and reused, not allocated per call.
  Status FillDestinationClass(const std::vector<Holder>& dclass, const std::vector<std::vector<Holder>>& src_classes) {
    Destination& d = destination_;
    d.box = dclass.front().shard->box;
    d.offset = dclass.front().shard->byte_offset;
    d.ranks.clear();
    d.group_ids.clear();
    d.remote_ids.reset();
    for (const Holder& h : dclass) {
      const auto& ranks = dst_.ranks_of_class(h.rank_class);
      d.ranks.insert(d.ranks.end(), ranks.begin(), ranks.end());
    }
    std::sort(d.ranks.begin(), d.ranks.end());
    std::vector<Box>& remaining = remaining_;
    std::vector<Box>& next = next_;
    std::vector<std::optional<Box>>& haves = haves_;
    std::vector<Candidate>& candidates = candidates_;
    remaining.assign(1, d.box);
    for (const auto& sclass : src_classes) {
      if (remaining.empty()) break;
      const Box& sbox = sclass.front().shard->box;
      // Source classes are sorted by box offset: once one starts past the wanted range
      // on dim 0, none of the rest can intersect it.
      if (!d.box.shape.empty()) {
        if (sbox.offset[0] >= d.box.offset[0] + d.box.shape[0]) break;
        if (sbox.offset[0] + sbox.shape[0] <= d.box.offset[0]) continue;
      }
      haves.clear();
      for (const Box& want : remaining) haves.push_back(Intersect(want, sbox));
      if (std::none_of(haves.begin(), haves.end(), [](const auto& h) { return h.has_value(); })) continue;
      candidates.clear();
      std::map<std::uint32_t, std::vector<Candidate>> sum_groups;  // Partial(sum) addends by group
      for (const Holder& h : sclass) {
        for (std::uint32_t r : src_.ranks_of_class(h.rank_class)) {
          (h.shard->partial_group != 0 ? sum_groups[h.shard->partial_group] : candidates).push_back({r, h.shard});
        }
      }
      if (!candidates.empty() && !sum_groups.empty()) {
        return InvalidArgument(fmt::format("layout {} holds box {} of {} both as values and as Partial addends",
                                           src_.description(), ToString(sbox), src_.tensors()[src_tensor_].name));
      }
      auto by_rank = [](const Candidate& a, const Candidate& b) { return a.rank < b.rank; };
      std::sort(candidates.begin(), candidates.end(), by_rank);
      for (auto& [id, members] : sum_groups) std::sort(members.begin(), members.end(), by_rank);
      next.clear();
      for (std::size_t w = 0; w < remaining.size(); ++w) {
        if (!haves[w]) {
          next.push_back(remaining[w]);
          continue;
        }
        const Box& have = *haves[w];
        if (!sum_groups.empty()) {
          Reduce(sum_groups, have, d);
        } else {
          const bool split = options_.replica_policy == ReplicaPolicy::kSpread && candidates.size() > 1 &&
                             static_cast<std::uint64_t>(have.numel()) * esize_ >= kSplitPieceBytes;
          if (split) {
            for (const Box& piece : SplitPiece(have, candidates.size())) Emit(Choose(candidates), piece, d);
          } else {
            Emit(Choose(candidates), have, d);
          }
        }
        if (!(have == remaining[w])) {
          for (Box& rest : Subtract(remaining[w], have)) next.push_back(std::move(rest));
        }
      }
      remaining.swap(next);
    }
    if (!remaining.empty()) {
      return InvalidArgument(fmt::format("no rank of layout {} holds {} of {} needed by rank {} of layout {}",
                                         src_.description(), ToString(remaining.front()), dst_.tensors()[tensor_].name,
                                         d.ranks.front(), dst_.description()));
    }
    return Status::Ok();
  }

  // The replica that sends a piece (ReplicaPolicy). Candidates are sorted by rank.
  const Candidate& Choose(const std::vector<Candidate>& candidates) const {
    if (options_.replica_policy == ReplicaPolicy::kFirstReplica) return candidates.front();
    return *std::min_element(candidates.begin(), candidates.end(), [&](const Candidate& a, const Candidate& b) {
      return std::tie(load_[a.rank], a.rank) < std::tie(load_[b.rank], b.rank);
    });
  }

  // Destination groups of `d` for a source in some process: the ranks in that process
  // (LOCAL) and the others; -1 when empty. Without a process map: one remote group.
  std::pair<std::int64_t, std::int64_t> GroupIds(std::uint32_t src_rank, Destination& d) {
    if (!by_process_) {
      if (!d.remote_ids) d.remote_ids.emplace(-1, d.ranks.empty() ? -1 : groups_.Id(d.ranks, false));
      return *d.remote_ids;
    }
    const int process = options_.src_process[src_rank];
    auto [it, inserted] = d.group_ids.try_emplace(process, -1, -1);
    if (inserted) {
      std::vector<std::uint32_t> local, remote;
      for (std::uint32_t r : d.ranks) (by_process_ && options_.dst_process[r] == process ? local : remote).push_back(r);
      if (!local.empty()) it->second.first = groups_.Id(local, true);
      if (!remote.empty()) it->second.second = groups_.Id(remote, false);
    }
    return it->second;
  }

  // The runs of `piece` from `from`'s shard to the destination class, as moves.
  void Emit(const Candidate& from, const Box& piece, Destination& d) {
    const auto [local_gid, remote_gid] = GroupIds(from.rank, d);
    // What each run needs, behind one pointer: the callback then fits std::function's inline
    // storage instead of a heap block per call.
    struct RunSink {
      std::pmr::deque<Move>* out;
      std::uint64_t* run_count;
      std::uint64_t esize, src_base, dst_base;
      std::uint32_t src_rank, dst_group;
    } sink{&runs_by_source_[from.rank], &run_count_, esize_, from.shard->byte_offset, d.offset, from.rank, 0};
    for (const std::int64_t g : {local_gid, remote_gid}) {
      if (g < 0) continue;
      sink.dst_group = static_cast<std::uint32_t>(g);
      ForEachStridedRun(piece, from.shard->box, d.box, [k = &sink](const StridedRun& r) {
        Move m;
        m.src_rank = k->src_rank;
        m.dst_group = k->dst_group;
        m.src_offset = k->src_base + static_cast<std::uint64_t>(r.from_element) * k->esize;
        m.dst_offset = k->dst_base + static_cast<std::uint64_t>(r.to_element) * k->esize;
        m.length = static_cast<std::uint64_t>(r.elements) * k->esize;
        m.count = static_cast<std::uint64_t>(r.count);
        m.src_stride = static_cast<std::uint64_t>(r.from_stride) * k->esize;
        m.dst_stride = static_cast<std::uint64_t>(r.to_stride) * k->esize;
        *k->run_count += m.count;
        k->out->push_back(m);
      });
    }
    load_[from.rank] += static_cast<std::uint64_t>(piece.numel()) * esize_ * d.ranks.size();
  }

  // A piece held as Partial(sum) addends: choose the sum group (replicas of the sum) and
  // its reducer by the replica policy, copy every addend into the reducer's scratch
  // slots, sum there, and send the sum (see Reduction in transfer_plan.h).
  void Reduce(const std::map<std::uint32_t, std::vector<Candidate>>& sum_groups, const Box& piece, Destination& d) {
    const std::vector<Candidate>* group = nullptr;
    const Candidate* reducer = nullptr;
    for (const auto& [id, members] : sum_groups) {
      const Candidate& best = Choose(members);
      const bool better = reducer == nullptr ||
                          (options_.replica_policy == ReplicaPolicy::kSpread
                               ? std::tie(load_[best.rank], best.rank) < std::tie(load_[reducer->rank], reducer->rank)
                               : best.rank < reducer->rank);
      if (better) {
        reducer = &best;
        group = &members;
      }
    }
    const std::uint64_t piece_bytes = static_cast<std::uint64_t>(piece.numel()) * esize_;
    std::uint64_t& used = scratch_[reducer->rank];
    const std::uint64_t slot0 = (used + 63) & ~std::uint64_t{63};
    used = slot0 + piece_bytes * group->size();
    for (std::size_t k = 0; k < group->size(); ++k) {
      const Candidate& member = (*group)[k];
      ForEachStridedRun(piece, member.shard->box, piece, [&](const StridedRun& r) {
        reduce_copies_.push_back(ReduceCopy{
            reducer->rank, member.rank, member.shard->byte_offset + static_cast<std::uint64_t>(r.from_element) * esize_,
            slot0 + k * piece_bytes + static_cast<std::uint64_t>(r.to_element) * esize_,
            static_cast<std::uint64_t>(r.elements) * esize_, static_cast<std::uint64_t>(r.count),
            static_cast<std::uint64_t>(r.from_stride) * esize_, static_cast<std::uint64_t>(r.to_stride) * esize_});
      });
      if (member.rank != reducer->rank) load_[member.rank] += piece_bytes;
    }
    reductions_.push_back(Reduction{reducer->rank, slot0, piece_bytes, static_cast<std::uint32_t>(group->size()),
                                    static_cast<std::uint8_t>(dst_.tensors()[tensor_].dtype)});
    // The sum sits in slot 0 as a dense box, addressed after the reducer's buffer.
    const ShardRef sum{src_tensor_, piece, src_.rank(static_cast<int>(reducer->rank)).buffer_bytes + slot0, 0};
    Emit(Candidate{reducer->rank, &sum}, piece, d);
  }

  // Step 4a: runs sorted per source by (group, offset), adjacent ones merged. The order is
  // that of a stable sort by (group, source offset), made in two steps that are linear on what
  // the planner emits: a counting sort by group (a source's runs alternate between a few groups,
  // tensor by tensor), then each group's runs by source offset, which are almost always in order
  // already (a stable sort of the whole deque was a tenth of Kimi-K2's plan time).
  std::vector<Move> CoalescedMoves() {
    std::size_t total = 0;
    std::size_t longest = 0;
    for (const std::pmr::deque<Move>& runs : runs_by_source_) {
      total += runs.size();
      longest = std::max(longest, runs.size());
    }
    std::vector<Move> moves;
    moves.reserve(total);
    AdviseHugePages(moves.data(), total * sizeof(Move));  // before its first touch
    std::vector<Move> by_group(longest);
    std::vector<std::size_t> group_start(groups_.size() + 1);
    std::vector<std::size_t> next(groups_.size());
    auto by_offset = [](const Move& a, const Move& b) { return a.src_offset < b.src_offset; };
    for (std::pmr::deque<Move>& runs : runs_by_source_) {
      std::fill(group_start.begin(), group_start.end(), 0);
      for (const Move& r : runs) ++group_start[r.dst_group + 1];
      for (std::size_t g = 1; g < group_start.size(); ++g) group_start[g] += group_start[g - 1];
      std::copy(group_start.begin(), group_start.end() - 1, next.begin());
      for (const Move& r : runs) by_group[next[r.dst_group]++] = r;
      for (std::size_t g = 0; g + 1 < group_start.size(); ++g) {
        const auto first = by_group.begin() + static_cast<std::ptrdiff_t>(group_start[g]);
        const auto last = by_group.begin() + static_cast<std::ptrdiff_t>(group_start[g + 1]);
        if (!std::is_sorted(first, last, by_offset)) std::stable_sort(first, last, by_offset);
      }
      for (std::size_t i = 0; i < runs.size(); ++i) {
        const Move& r = by_group[i];
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
    return moves;
  }

  const Layout& src_;
  const Layout& dst_;
  const PlanOptions& options_;
  const bool by_process_;
  GroupRegistry groups_;
  std::vector<std::uint64_t> load_;  // bytes each source rank sends so far
  std::vector<ReduceCopy> reduce_copies_;
  std::vector<Reduction> reductions_;
  std::vector<std::uint64_t> scratch_;  // scratch bytes per source rank
  // The runs each source sends, until CoalescedMoves merges them. Up to hundreds of MB for a
  // 1T-parameter model; held in 2 MiB pages because first touches of fresh 4 KiB pages were most
  // of the planning time on a shadow-paging host (core/huge_page_memory.h). A deque, not a
  // vector: it grows by blocks, so nothing is copied and no outgrown buffer is left behind in the
  // monotonic resource (a vector's doubling touched twice the final size; peak RSS for Kimi-K2
  // 0.71 -> 0.58 GB). Released with the Planner.
  HugePageMemoryResource huge_pages_;
  std::pmr::monotonic_buffer_resource run_memory_{kHugePageBytes, &huge_pages_};
  std::vector<std::pmr::deque<Move>> runs_by_source_;
  std::uint64_t run_count_ = 0;
  // FillDestinationClass's working state, reused from call to call.
  Destination destination_;
  std::vector<Box> remaining_, next_;
  std::vector<std::optional<Box>> haves_;
  std::vector<Candidate> candidates_;
  // The tensor being planned: destination index, source index, element size.
  std::uint32_t tensor_ = 0;
  std::uint32_t src_tensor_ = 0;
  std::uint64_t esize_ = 1;
};

}  // namespace

Result<TransferPlan> PlanTransfer(const Layout& src, const Layout& dst, const PlanOptions& options) {
  SW_RETURN_IF_ERROR(CheckOptions(src, dst, options));
  SW_ASSIGN_OR_RETURN(const std::vector<std::uint32_t> match, MatchTensors(src, dst));
  Planner planner(src, dst, options);
  SW_RETURN_IF_ERROR(planner.Run(match));
  return planner.Finish();
}

}  // namespace shardwire

namespace shardwire {

Status ScheduleJointly(std::span<TransferPlan* const> plans, int k) {
  if (k < 1) return InvalidArgument(fmt::format("ScheduleJointly: K must be at least 1, not {}", k));
  if (plans.empty()) return Status::Ok();
  for (const TransferPlan* p : plans) {
    if (p == nullptr) return InvalidArgument("ScheduleJointly: a null plan");
    if (p->src_world() != plans.front()->src_world() || p->dst_world() != plans.front()->dst_world()) {
      return InvalidArgument(fmt::format("ScheduleJointly: world sizes {} -> {} and {} -> {} differ",
                                         plans.front()->src_world(), plans.front()->dst_world(), p->src_world(),
                                         p->dst_world()));
    }
  }
  // One bucket list over one group index space, where groups with the same members are one
  // group: a source's buckets to the same destinations in two plans form one pair (one round,
  // one peer slot), as if one plan held both.
  std::vector<std::vector<std::uint32_t>> groups;
  std::map<std::vector<std::uint32_t>, std::uint32_t> group_of;
  std::vector<Bucket> joint;
  for (const TransferPlan* p : plans) {
    for (Bucket b : p->buckets()) {
      const std::vector<std::uint32_t>& members = p->dst_groups()[b.dst_group];
      auto [it, added] = group_of.try_emplace(members, static_cast<std::uint32_t>(groups.size()));
      if (added) groups.push_back(members);
      b.dst_group = it->second;
      joint.push_back(b);
    }
  }
  plan::ScheduleRounds(joint, groups, plans.front()->src_world(), plans.front()->dst_world(), k);
  std::size_t next = 0;
  for (TransferPlan* p : plans) {
    std::vector<Bucket> buckets = p->buckets();
    for (Bucket& b : buckets) b.round = joint[next++].round;
    std::vector<std::uint64_t> scratch(static_cast<std::size_t>(p->src_world()));
    for (int r = 0; r < p->src_world(); ++r) scratch[static_cast<std::size_t>(r)] = p->scratch_bytes(r);
    TransferPlan rescheduled(p->src_world(), p->dst_world(), p->dst_groups(), p->moves(), std::move(buckets),
                             p->runs_before_coalescing());
    if (!p->reductions().empty() || !p->reduce_copies().empty()) {
      rescheduled.SetReductions(p->reduce_copies(), p->reductions(), std::move(scratch));
    }
    *p = std::move(rescheduled);
  }
  return Status::Ok();
}

}  // namespace shardwire
