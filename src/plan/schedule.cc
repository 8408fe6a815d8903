#include "plan/schedule.h"

#include <algorithm>
#include <map>
#include <tuple>

namespace shardwire {

std::vector<Move> CapMoveLength(std::vector<Move> moves, std::uint64_t cap) {
  const bool any_long = std::any_of(moves.begin(), moves.end(), [&](const Move& m) { return m.bytes() > cap; });
  if (!any_long) return moves;
  std::vector<Move> out;
  out.reserve(moves.size());
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
    b.transport = local[m.dst_group]                ? TransportKind::kLocal
                  : groups[m.dst_group].size() == 1 ? TransportKind::kP2P
                                                    : TransportKind::kBroadcast;
    b.first_move = i;
    b.move_count = 1;
    b.bytes = m.bytes();
    buckets.push_back(b);
  }
  return buckets;
}

void ScheduleRounds(std::vector<Bucket>& buckets, const std::vector<std::vector<std::uint32_t>>& groups, int src_world,
                    int dst_world, int k) {
  // One entry per (source, group) pair of network buckets.
  struct Pair {
    std::uint32_t src, group;
    std::uint64_t bytes;
    std::uint32_t round = 0;
  };
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::size_t> index;
  std::vector<Pair> pairs;
  for (const Bucket& b : buckets) {
    if (b.transport == TransportKind::kLocal) continue;
    auto [it, inserted] = index.try_emplace({b.src_rank, b.dst_group}, pairs.size());
    if (inserted) pairs.push_back({b.src_rank, b.dst_group, 0});
    pairs[it->second].bytes += b.bytes;
  }
  std::vector<std::size_t> order(pairs.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return std::make_tuple(-static_cast<double>(pairs[a].bytes), pairs[a].src, pairs[a].group) <
           std::make_tuple(-static_cast<double>(pairs[b].bytes), pairs[b].src, pairs[b].group);
  });
  // Per round: sends in use per source, receives in use per destination, and the bytes
  // each source's egress and each destination's ingress carry (a broadcast puts its bytes
  // on the source's egress once per member: the publisher writes every member directly).
  struct Round {
    std::vector<int> sends, receives;
    std::vector<std::uint64_t> egress, ingress;
    std::uint64_t max_load = 0;  // the busiest egress or ingress of the round, bytes
  };
  std::vector<Round> rounds;
  for (std::size_t i : order) {
    Pair& p = pairs[i];
    const auto& members = groups[p.group];
    const int need = std::min<int>(static_cast<int>(members.size()), k);
    const std::uint64_t out_bytes = p.bytes * members.size();
    // Among the rounds where the pair fits the K limits, take the one whose busiest link
    // grows least (ties: the earliest; stop at the first that does not grow). A new round
    // would grow by the pair's whole load, never less than an existing round, so rounds
    // are only opened when the K limits leave no other choice.
    std::size_t best = rounds.size();
    std::uint64_t best_growth = 0;
    for (std::size_t r = 0; r < rounds.size() && !(best < rounds.size() && best_growth == 0); ++r) {
      const Round& round = rounds[r];
      bool fits = round.sends[p.src] + need <= k;
      for (std::size_t m = 0; fits && m < members.size(); ++m) fits = round.receives[members[m]] + 1 <= k;
      if (!fits) continue;
      std::uint64_t peak = round.egress[p.src] + out_bytes;
      for (std::uint32_t d : members) peak = std::max(peak, round.ingress[d] + p.bytes);
      const std::uint64_t growth = peak > round.max_load ? peak - round.max_load : 0;
      if (best == rounds.size() || growth < best_growth) {
        best_growth = growth;
        best = r;
      }
    }
    if (best == rounds.size()) {
      rounds.push_back(Round{std::vector<int>(static_cast<std::size_t>(src_world), 0),
                             std::vector<int>(static_cast<std::size_t>(dst_world), 0),
                             std::vector<std::uint64_t>(static_cast<std::size_t>(src_world), 0),
                             std::vector<std::uint64_t>(static_cast<std::size_t>(dst_world), 0), 0});
    }
    Round& round = rounds[best];
    round.sends[p.src] += need;
    round.egress[p.src] += out_bytes;
    round.max_load = std::max(round.max_load, round.egress[p.src]);
    for (std::uint32_t d : members) {
      round.receives[d] += 1;
      round.ingress[d] += p.bytes;
      round.max_load = std::max(round.max_load, round.ingress[d]);
    }
    p.round = static_cast<std::uint32_t>(best);
  }
  for (Bucket& b : buckets) {
    if (b.transport != TransportKind::kLocal) b.round = pairs[index.at({b.src_rank, b.dst_group})].round;
  }
}

}  // namespace shardwire
