#include "workflows/load_assignment.h"

#include <algorithm>
#include <map>

#include "shardwire/planner.h"

namespace shardwire::workflows {

Result<std::vector<SourceRun>> CoverageOf(const Layout& src, const Layout& dst, int dst_rank) {
  PlanOptions options;
  options.replica_policy = ReplicaPolicy::kSpread;
  SW_ASSIGN_OR_RETURN(const TransferPlan plan, PlanTransfer(src, dst, options));
  // One run per row of every move (a row-parallel shard: tens of thousands). Sized once,
  // sorted only when the moves' rows interleave, merged in place: each fresh page of a
  // growing vector is a page fault, which costs 10-50 us on the development VMs, and four
  // ranks planning at once spent 60-200 ms each here before (docs/benchmarks_history.md).
  std::vector<Move> moves = plan.MovesTo(dst_rank);
  std::sort(moves.begin(), moves.end(), [](const Move& a, const Move& b) { return a.dst_offset < b.dst_offset; });
  std::uint64_t rows = 0;
  for (const Move& m : moves) rows += m.count;
  std::vector<SourceRun> runs;
  runs.reserve(static_cast<std::size_t>(rows));
  for (const Move& m : moves) {
    for (std::uint64_t k = 0; k < m.count; ++k) {
      runs.push_back({m.dst_offset + k * m.dst_stride, m.length, m.src_rank, m.src_offset + k * m.src_stride});
    }
  }
  auto by_dst = [](const SourceRun& a, const SourceRun& b) { return a.dst_offset < b.dst_offset; };
  if (!std::is_sorted(runs.begin(), runs.end(), by_dst)) std::sort(runs.begin(), runs.end(), by_dst);
  std::size_t out = 0;
  for (const SourceRun& r : runs) {
    if (r.length == 0) continue;
    if (out > 0) {
      SourceRun& last = runs[out - 1];
      if (last.src_rank == r.src_rank && last.dst_offset + last.length == r.dst_offset &&
          last.src_offset + last.length == r.src_offset) {
        last.length += r.length;
        continue;
      }
    }
    runs[out++] = r;
  }
  runs.resize(out);
  return runs;
}

std::vector<StridedSourceRun> GroupStrided(const std::vector<SourceRun>& runs) {
  std::vector<StridedSourceRun> out;
  for (const SourceRun& r : runs) {
    if (!out.empty()) {
      StridedSourceRun& g = out.back();
      if (g.length == r.length && r.length > 0) {
        if (g.count == 1) {
          if (r.dst_offset >= g.dst_offset + g.length && r.src_offset >= g.src_offset + g.length) {
            g.dst_stride = r.dst_offset - g.dst_offset;
            g.src_stride = r.src_offset - g.src_offset;
            g.count = 2;
            continue;
          }
        } else if (r.dst_offset == g.dst_offset + g.count * g.dst_stride &&
                   r.src_offset == g.src_offset + g.count * g.src_stride) {
          ++g.count;
          continue;
        }
      }
    }
    out.push_back({r.dst_offset, r.src_offset, r.length, 1, 0, 0});
  }
  return out;
}

std::vector<Interval> Normalize(std::vector<Interval> intervals) {
  auto by_begin = [](const Interval& a, const Interval& b) { return a.begin < b.begin; };
  if (!std::is_sorted(intervals.begin(), intervals.end(), by_begin)) {  // usually sorted already (CoverageOf)
    std::sort(intervals.begin(), intervals.end(), by_begin);
  }
  std::vector<Interval> out;
  out.reserve(intervals.size());
  for (const Interval& i : intervals) {
    if (i.end <= i.begin) continue;
    if (!out.empty() && out.back().end >= i.begin) {
      out.back().end = std::max(out.back().end, i.end);
    } else {
      out.push_back(i);
    }
  }
  return out;
}

std::vector<Interval> IntervalsOf(const std::vector<SourceRun>& runs) {
  std::vector<Interval> out;
  out.reserve(runs.size());
  for (const SourceRun& r : runs) out.push_back({r.dst_offset, r.dst_offset + r.length});
  return Normalize(std::move(out));
}

std::uint64_t TotalBytes(const std::vector<Interval>& intervals) {
  std::uint64_t total = 0;
  for (const Interval& i : intervals) total += i.end - i.begin;
  return total;
}

std::vector<std::vector<Interval>> SplitEvenly(const std::vector<Interval>& intervals, std::size_t parts) {
  if (parts == 0) parts = 1;
  std::vector<std::vector<Interval>> out(parts);
  const std::uint64_t total = TotalBytes(intervals);
  std::uint64_t consumed = 0;  // bytes before the current position
  std::size_t part = 0;
  for (const Interval& iv : intervals) {
    std::uint64_t pos = iv.begin;
    while (pos < iv.end) {
      // Portion `part` ends at byte index total * (part + 1) / parts.
      // floor(total * (part + 1) / parts) without overflow.
      const std::uint64_t part_end = total / parts * (part + 1) + (total % parts) * (part + 1) / parts;
      const std::uint64_t take = std::min<std::uint64_t>(iv.end - pos, part_end - consumed);
      if (take == 0) {
        ++part;
        continue;
      }
      out[part].push_back({pos, pos + take});
      pos += take;
      consumed += take;
    }
  }
  return out;
}

std::vector<SourceRun> Clip(const std::vector<SourceRun>& coverage, const std::vector<Interval>& intervals) {
  std::vector<SourceRun> out;
  out.reserve(coverage.size() + intervals.size());  // at most one run per run plus one per cut
  for (const Interval& iv : intervals) {
    // First run ending after iv.begin.
    auto it = std::upper_bound(coverage.begin(), coverage.end(), iv.begin,
                               [](std::uint64_t v, const SourceRun& r) { return v < r.dst_offset + r.length; });
    for (; it != coverage.end() && it->dst_offset < iv.end; ++it) {
      const std::uint64_t b = std::max(iv.begin, it->dst_offset);
      const std::uint64_t e = std::min(iv.end, it->dst_offset + it->length);
      if (e <= b) continue;
      out.push_back({b, e - b, it->src_rank, it->src_offset + (b - it->dst_offset)});
    }
  }
  return out;
}

std::vector<std::vector<SourceRun>> CutMoves(const std::vector<SourceRun>& runs, std::uint64_t move_bytes) {
  if (move_bytes == 0) move_bytes = 1;
  std::map<std::uint32_t, std::vector<SourceRun>> by_rank;
  const bool one_rank = std::all_of(runs.begin(), runs.end(),
                                    [&](const SourceRun& r) { return r.src_rank == runs.front().src_rank; });
  if (one_rank && !runs.empty()) {
    by_rank[runs.front().src_rank] = runs;  // one copy, no per-row growth
  } else {
    std::map<std::uint32_t, std::size_t> count;
    for (const SourceRun& r : runs) ++count[r.src_rank];
    for (const auto& [rank, n] : count) by_rank[rank].reserve(n);
    for (const SourceRun& r : runs) by_rank[r.src_rank].push_back(r);
  }
  std::vector<std::vector<SourceRun>> moves;
  for (auto& [rank, list] : by_rank) {
    auto by_dst = [](const SourceRun& a, const SourceRun& b) { return a.dst_offset < b.dst_offset; };
    if (!std::is_sorted(list.begin(), list.end(), by_dst)) std::sort(list.begin(), list.end(), by_dst);
    std::vector<SourceRun> current;
    std::uint64_t current_bytes = 0;
    for (SourceRun r : list) {
      while (r.length > 0) {
        const std::uint64_t take = std::min(r.length, move_bytes - current_bytes);
        current.push_back({r.dst_offset, take, r.src_rank, r.src_offset});
        current_bytes += take;
        r.dst_offset += take;
        r.src_offset += take;
        r.length -= take;
        if (current_bytes == move_bytes) {
          moves.push_back(std::move(current));
          current.clear();
          current_bytes = 0;
        }
      }
    }
    if (!current.empty()) moves.push_back(std::move(current));
  }
  return moves;
}

}  // namespace shardwire::workflows
