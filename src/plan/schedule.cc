#include "plan/schedule.h"

#include <algorithm>
#include <map>
#include <tuple>

#include <fmt/format.h>

#include "core/huge_page_memory.h"

namespace shardwire::plan {

Result<std::vector<Move>> CapMoveLength(std::vector<Move> moves, std::uint64_t cap) {
  // The pieces each move becomes, counted first: the output is allocated once, at its final
  // size and in 2 MiB pages (tens of MB for a 1T-parameter model; core/huge_page_memory.h).
  std::uint64_t pieces = 0;
  for (const Move& m : moves) {
    if (m.bytes() <= cap) {
      pieces += 1;
    } else if (m.length <= cap) {
      const std::uint64_t per = cap / m.length;
      pieces += (m.count + per - 1) / per;
    } else {
      const std::uint64_t per_run = (m.length + cap - 1) / cap;
      pieces += per_run > kMaxPlanMoves / m.count ? kMaxPlanMoves + 1 : m.count * per_run;
    }
    if (pieces > kMaxPlanMoves) {
      return InvalidArgument(
          fmt::format("bucket_bytes {} cuts the plan into more than {} moves; raise it", cap, kMaxPlanMoves));
    }
  }
  if (pieces == moves.size()) return moves;  // no move was longer than the cap
  std::vector<Move> out;
  out.reserve(pieces);
  AdviseHugePages(out.data(), pieces * sizeof(Move));
  for (const Move& m : moves) {
    if (m.bytes() <= cap) {
      out.push_back(m);
    } else if (m.length <= cap) {  // a strided move: split by runs
      const std::uint64_t per = cap / m.length;
      for (std::uint64_t done = 0; done < m.count; done += per) {
        Move piece = m;
        piece.src_offset += done * m.src_stride;
        piece.dst_offset += done * m.dst_stride;
        piece.count = std::min(per, m.count - done);
        out.push_back(piece);
      }
    } else {  // runs longer than the cap: each run split into cap-sized pieces
      for (std::uint64_t i = 0; i < m.count; ++i) {
        for (std::uint64_t done = 0; done < m.length; done += cap) {
          Move piece = m;
          piece.src_offset += i * m.src_stride + done;
          piece.dst_offset += i * m.dst_stride + done;
          piece.length = std::min(cap, m.length - done);
          piece.count = 1;
          piece.src_stride = piece.dst_stride = 0;
          out.push_back(piece);
        }
      }
    }
  }
  return out;
}

std::vector<Bucket> MakeBuckets(const std::vector<Move>& moves, const std::vector<std::vector<std::uint32_t>>& groups,
                                const std::vector<bool>& local, std::uint64_t cap) {
  std::vector<Bucket> buckets;
  for (std::uint64_t i = 0; i < moves.size(); ++i) {
    const Move& m = moves[i];
    if (!buckets.empty()) {
      Bucket& b = buckets.back();
      if (b.src_rank == m.src_rank && b.dst_group == m.dst_group && b.bytes + m.bytes() <= cap) {
        ++b.move_count;
        b.bytes += m.bytes();
        continue;
      }
    }
    Bucket b;
    b.src_rank = m.src_rank;
    b.dst_group = m.dst_group;
    b.delivery = local[m.dst_group]                ? DeliveryKind::kLocal
                  : groups[m.dst_group].size() == 1 ? DeliveryKind::kP2P
                                                    : DeliveryKind::kBroadcast;
    b.first_move = i;
    b.move_count = 1;
    b.bytes = m.bytes();
    buckets.push_back(b);
  }
  return buckets;
}

namespace {

// One (source, destination group) pair of network buckets: they share a round.
struct Pair {
  std::uint32_t src, group;
  std::uint64_t bytes;
};

// The rounds of one schedule and its cost: the sum over rounds of the round's busiest
// link in bytes (a source's egress counting a broadcast once per member, or a
// destination's ingress), i.e. the sum of round times on a fabric of equal links.
struct Schedule {
  std::vector<std::uint32_t> round;  // per pair
  std::uint32_t rounds = 0;
  std::uint64_t cost = 0;
};

// Per-round K slots and byte loads.
class RoundState {
 public:
  RoundState(int src_world, int dst_world)
      : sends_(static_cast<std::size_t>(src_world), 0),
        receives_(static_cast<std::size_t>(dst_world), 0),
        egress_(static_cast<std::size_t>(src_world), 0),
        ingress_(static_cast<std::size_t>(dst_world), 0) {}

  bool Fits(const Pair& p, const std::vector<std::uint32_t>& members, int need, int k) const {
    if (sends_[p.src] + need > k) return false;
    for (std::uint32_t d : members) {
      if (receives_[d] + 1 > k) return false;
    }
    return true;
  }
  // The busiest of the pair's links in this round once the pair is added, bytes.
  std::uint64_t Peak(const Pair& p, const std::vector<std::uint32_t>& members) const {
    std::uint64_t peak = egress_[p.src] + p.bytes * members.size();
    for (std::uint32_t d : members) peak = std::max(peak, ingress_[d] + p.bytes);
    return peak;
  }
  void Add(const Pair& p, const std::vector<std::uint32_t>& members, int need) {
    sends_[p.src] += need;
    egress_[p.src] += p.bytes * members.size();
    max_load_ = std::max(max_load_, egress_[p.src]);
    for (std::uint32_t d : members) {
      receives_[d] += 1;
      ingress_[d] += p.bytes;
      max_load_ = std::max(max_load_, ingress_[d]);
    }
  }
  std::uint64_t max_load() const { return max_load_; }

 private:
  std::vector<int> sends_, receives_;
  std::vector<std::uint64_t> egress_, ingress_;
  std::uint64_t max_load_ = 0;
};

int Need(const std::vector<std::uint32_t>& members, int k) {
  return std::min<int>(static_cast<int>(members.size()), k);
}

// Pairs by decreasing bytes, each into the round (among those where it fits K) whose
// busiest link grows least (ties: the earliest; a new round only when none fits).
Schedule LeastGrowth(const std::vector<Pair>& pairs, const std::vector<std::vector<std::uint32_t>>& groups,
                     int src_world, int dst_world, int k) {
  std::vector<std::size_t> order(pairs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return std::make_tuple(-static_cast<double>(pairs[a].bytes), pairs[a].src, pairs[a].group) <
           std::make_tuple(-static_cast<double>(pairs[b].bytes), pairs[b].src, pairs[b].group);
  });
  Schedule out;
  out.round.assign(pairs.size(), 0);
  std::vector<RoundState> rounds;
  for (std::size_t i : order) {
    const Pair& p = pairs[i];
    const auto& members = groups[p.group];
    const int need = Need(members, k);
    // A new round would grow by the pair's whole load, never less than an existing round.
    std::size_t best = rounds.size();
    std::uint64_t best_growth = 0;
    for (std::size_t r = 0; r < rounds.size() && !(best < rounds.size() && best_growth == 0); ++r) {
      if (!rounds[r].Fits(p, members, need, k)) continue;
      const std::uint64_t peak = rounds[r].Peak(p, members);
      const std::uint64_t growth = peak > rounds[r].max_load() ? peak - rounds[r].max_load() : 0;
      if (best == rounds.size() || growth < best_growth) {
        best_growth = growth;
        best = r;
      }
    }
    if (best == rounds.size()) rounds.emplace_back(src_world, dst_world);
    rounds[best].Add(p, members, need);
    out.round[i] = static_cast<std::uint32_t>(best);
  }
  out.rounds = static_cast<std::uint32_t>(rounds.size());
  for (const RoundState& r : rounds) out.cost += r.max_load();
  return out;
}

// Round by round, the most urgent pairs first: a pair's urgency is the unscheduled bytes
// of its busiest link (its source's egress or a member's ingress), so the links that
// bound the whole transfer are busy in every round. The round's first pair sets its
// length; later pairs join when they fit K and do not make the round longer. Gives up
// (cost max) past `max_rounds` rounds.
Schedule CriticalFirst(const std::vector<Pair>& pairs, const std::vector<std::vector<std::uint32_t>>& groups,
                       int src_world, int dst_world, int k, std::uint32_t max_rounds) {
  Schedule out;
  out.round.assign(pairs.size(), 0);
  std::vector<std::uint64_t> left_out(static_cast<std::size_t>(src_world), 0),
      left_in(static_cast<std::size_t>(dst_world), 0);
  for (const Pair& p : pairs) {
    left_out[p.src] += p.bytes * groups[p.group].size();
    for (std::uint32_t d : groups[p.group]) left_in[d] += p.bytes;
  }
  std::vector<std::size_t> todo(pairs.size());
  for (std::size_t i = 0; i < todo.size(); ++i) todo[i] = i;
  std::vector<std::uint64_t> urgency(pairs.size(), 0);
  while (!todo.empty()) {
    if (out.rounds == max_rounds) {
      out.cost = ~std::uint64_t{0};
      return out;
    }
    for (std::size_t i : todo) {
      std::uint64_t u = left_out[pairs[i].src];
      for (std::uint32_t d : groups[pairs[i].group]) u = std::max(u, left_in[d]);
      urgency[i] = u;
    }
    std::sort(todo.begin(), todo.end(), [&](std::size_t a, std::size_t b) {
      return std::make_tuple(-static_cast<double>(urgency[a]), -static_cast<double>(pairs[a].bytes), pairs[a].src,
                             pairs[a].group) < std::make_tuple(-static_cast<double>(urgency[b]),
                                                               -static_cast<double>(pairs[b].bytes), pairs[b].src,
                                                               pairs[b].group);
    });
    RoundState round(src_world, dst_world);
    std::vector<std::size_t> rest;
    for (std::size_t i : todo) {
      const Pair& p = pairs[i];
      const auto& members = groups[p.group];
      const int need = Need(members, k);
      const bool first = round.max_load() == 0;
      if (round.Fits(p, members, need, k) && (first || round.Peak(p, members) <= round.max_load())) {
        round.Add(p, members, need);
        out.round[i] = out.rounds;
        left_out[p.src] -= p.bytes * members.size();
        for (std::uint32_t d : members) left_in[d] -= p.bytes;
      } else {
        rest.push_back(i);
      }
    }
    out.cost += round.max_load();
    ++out.rounds;
    todo = std::move(rest);
  }
  return out;
}

}  // namespace

void ScheduleRounds(std::vector<Bucket>& buckets, const std::vector<std::vector<std::uint32_t>>& groups, int src_world,
                    int dst_world, int k) {
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::size_t> index;
  std::vector<Pair> pairs;
  for (const Bucket& b : buckets) {
    if (b.delivery == DeliveryKind::kLocal) continue;
    auto [it, inserted] = index.try_emplace({b.src_rank, b.dst_group}, pairs.size());
    if (inserted) pairs.push_back({b.src_rank, b.dst_group, 0});
    pairs[it->second].bytes += b.bytes;
  }
  Schedule best = LeastGrowth(pairs, groups, src_world, dst_world, k);
  // Bounded effort: the critical-first schedule may use at most 4x the rounds.
  Schedule critical = CriticalFirst(pairs, groups, src_world, dst_world, k, 4 * best.rounds + 4);
  if (critical.cost < best.cost) best = std::move(critical);
  for (Bucket& b : buckets) {
    if (b.delivery != DeliveryKind::kLocal) b.round = best.round[index.at({b.src_rank, b.dst_group})];
  }
}

}  // namespace shardwire::plan
