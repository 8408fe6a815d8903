#include "workflows/load_assignment.h"

#include <algorithm>
#include <map>

#include "shardwire/planner.h"

namespace shardwire::workflows {
namespace {

bool ByDst(const SourceRun& a, const SourceRun& b) { return a.dst_offset < b.dst_offset; }

// A run whose rows are contiguous in both buffers is one row.
SourceRun Flatten(SourceRun r) {
  if (r.count > 1 && r.dst_stride == r.length && r.src_stride == r.length) {
    r.length *= r.count;
    r.count = 1;
  }
  if (r.count == 1) r.dst_stride = r.src_stride = 0;
  return r;
}

// Rows [first, first + n) of `r` as a run (n >= 1).
SourceRun Rows(const SourceRun& r, std::uint64_t first, std::uint64_t n) {
  SourceRun out = r.Row(first);
  if (n > 1) {
    out.count = n;
    out.dst_stride = r.dst_stride;
    out.src_stride = r.src_stride;
  }
  return out;
}

// Bytes [from, to) of row `i` of `r` (offsets within the row) as a one-row run.
SourceRun RowPart(const SourceRun& r, std::uint64_t i, std::uint64_t from, std::uint64_t to) {
  SourceRun out = r.Row(i);
  out.dst_offset += from;
  out.src_offset += from;
  out.length = to - from;
  return out;
}

// Appends the part of `r` inside [b, e) to `out`: whole rows as one strided run, a row
// the interval cuts as a one-row run of its part.
void ClipRun(const SourceRun& r, std::uint64_t b, std::uint64_t e, std::vector<SourceRun>& out) {
  if (r.count == 1) {
    const std::uint64_t lo = std::max(b, r.dst_offset), hi = std::min(e, r.dst_offset + r.length);
    if (lo < hi) out.push_back(RowPart(r, 0, lo - r.dst_offset, hi - r.dst_offset));
    return;
  }
  // Rows that reach past b: dst_offset + i * stride + length > b.
  std::uint64_t first = 0;
  if (b >= r.dst_offset + r.length) first = (b - r.dst_offset - r.length) / r.dst_stride + 1;
  // Rows that start before e: dst_offset + i * stride < e.
  const std::uint64_t end = e <= r.dst_offset ? 0 : std::min(r.count, (e - r.dst_offset - 1) / r.dst_stride + 1);
  if (first >= end) return;
  auto row_start = [&](std::uint64_t i) { return r.dst_offset + i * r.dst_stride; };
  if (row_start(first) < b || row_start(first) + r.length > e) {  // first row cut
    const std::uint64_t s = row_start(first);
    out.push_back(RowPart(r, first, std::max(b, s) - s, std::min(e, s + r.length) - s));
    if (++first >= end) return;
  }
  std::uint64_t whole_end = end;
  const bool last_cut = row_start(end - 1) + r.length > e;
  if (last_cut) --whole_end;
  if (first < whole_end) out.push_back(Rows(r, first, whole_end - first));
  if (last_cut) out.push_back(RowPart(r, end - 1, 0, e - row_start(end - 1)));
}

}  // namespace

Result<std::vector<SourceRun>> CoverageOf(const Layout& src, const Layout& dst, int dst_rank) {
  PlanOptions options;
  options.replica_policy = ReplicaPolicy::kSpread;
  SW_ASSIGN_OR_RETURN(const TransferPlan plan, PlanTransfer(src, dst, options));
  // One run per move, strided moves kept strided: a row-parallel shard is one run, not
  // tens of thousands (each fresh page of a per-row vector costs a page fault, 10-50 us
  // on the development VMs: docs/benchmarks_history.md).
  std::vector<SourceRun> runs;
  for (const Move& m : plan.MovesTo(dst_rank)) {
    if (m.length == 0 || m.count == 0) continue;
    const SourceRun run{m.dst_offset, m.length, m.src_rank, m.src_offset, m.count, m.dst_stride, m.src_stride};
    if (m.count > 1 && (m.dst_stride < m.length || m.src_stride < m.length)) {
      // Rows that would overlap are not a strided run (never made by the planner: a
      // row is at most its tensor's row pitch); kept correct row by row all the same.
      for (std::uint64_t i = 0; i < m.count; ++i) runs.push_back(run.Row(i));
      continue;
    }
    runs.push_back(Flatten(run));
  }
  if (!std::is_sorted(runs.begin(), runs.end(), ByDst)) std::sort(runs.begin(), runs.end(), ByDst);
  std::size_t out = 0;
  for (const SourceRun& r : runs) {
    if (out > 0) {
      SourceRun& last = runs[out - 1];
      if (last.count == 1 && r.count == 1 && last.src_rank == r.src_rank &&
          last.dst_offset + last.length == r.dst_offset && last.src_offset + last.length == r.src_offset) {
        last.length += r.length;
        continue;
      }
    }
    runs[out++] = r;
  }
  runs.resize(out);
  return runs;
}

void AppendIntervals(const SourceRun& run, std::vector<Interval>& out) {
  if (run.length == 0 || run.count == 0) return;
  if (run.count == 1 || run.dst_stride == run.length) {
    out.push_back({run.dst_offset, run.dst_end()});
    return;
  }
  ForEachRow(run, [&](std::uint64_t dst, std::uint64_t, std::uint64_t n) { out.push_back({dst, dst + n}); });
}

std::uint64_t CappedMoveBytes(double bandwidth_bytes_per_s, double lease_seconds, std::uint64_t move_bytes) {
  const std::uint64_t floor_bytes = std::min<std::uint64_t>(64u << 10, move_bytes);
  const double lease_bytes = bandwidth_bytes_per_s * lease_seconds;
  if (!(lease_bytes < static_cast<double>(move_bytes))) return move_bytes;  // also NaN and +inf
  return std::max(static_cast<std::uint64_t>(std::max(lease_bytes, 0.0)), floor_bytes);
}

std::vector<Interval> Normalize(std::vector<Interval> intervals) {
  auto by_begin = [](const Interval& a, const Interval& b) { return a.begin < b.begin; };
  if (!std::is_sorted(intervals.begin(), intervals.end(), by_begin)) {  // usually sorted already (CoverageOf)
    std::sort(intervals.begin(), intervals.end(), by_begin);
  }
  std::size_t out = 0;  // merged in place
  for (const Interval& i : intervals) {
    if (i.end <= i.begin) continue;
    if (out > 0 && intervals[out - 1].end >= i.begin) {
      intervals[out - 1].end = std::max(intervals[out - 1].end, i.end);
    } else {
      intervals[out++] = i;
    }
  }
  intervals.resize(out);
  return intervals;
}

std::vector<Interval> IntervalsOf(const std::vector<SourceRun>& runs) {
  std::vector<Interval> out;
  out.reserve(runs.size());
  for (const SourceRun& r : runs) AppendIntervals(r, out);
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
  for (const SourceRun& r : coverage) {
    if (r.length == 0 || r.count == 0) continue;
    const std::uint64_t r_end = r.dst_end();
    // First interval ending after the run's first byte (intervals are sorted and disjoint,
    // so their ends are sorted too).
    auto it = std::upper_bound(intervals.begin(), intervals.end(), r.dst_offset,
                               [](std::uint64_t v, const Interval& iv) { return v < iv.end; });
    for (; it != intervals.end() && it->begin < r_end; ++it) ClipRun(r, it->begin, it->end, out);
  }
  if (!std::is_sorted(out.begin(), out.end(), ByDst)) std::sort(out.begin(), out.end(), ByDst);
  return out;
}

std::vector<std::vector<SourceRun>> CutMoves(const std::vector<SourceRun>& runs, std::uint64_t move_bytes) {
  if (move_bytes == 0) move_bytes = 1;
  std::map<std::uint32_t, std::vector<SourceRun>> by_rank;
  for (const SourceRun& r : runs) {
    if (r.length > 0 && r.count > 0) by_rank[r.src_rank].push_back(r);
  }
  std::vector<std::vector<SourceRun>> moves;
  for (auto& [rank, list] : by_rank) {
    if (!std::is_sorted(list.begin(), list.end(), ByDst)) std::sort(list.begin(), list.end(), ByDst);
    std::vector<SourceRun> current;
    std::uint64_t current_bytes = 0;
    auto add = [&](const SourceRun& piece) {
      current.push_back(piece);
      current_bytes += piece.bytes();
      if (current_bytes == move_bytes) {
        moves.push_back(std::move(current));
        current.clear();
        current_bytes = 0;
      }
    };
    for (const SourceRun& r : list) {
      std::uint64_t row = 0;  // the next row of r to place
      while (row < r.count) {
        const std::uint64_t whole = std::min(r.count - row, (move_bytes - current_bytes) / r.length);
        if (whole > 0) {
          add(Rows(r, row, whole));
          row += whole;
          continue;
        }
        // The row does not fit in what is left of this move: it ends this move and
        // continues in the next one(s).
        for (std::uint64_t from = 0; from < r.length;) {
          const std::uint64_t take = std::min(r.length - from, move_bytes - current_bytes);
          add(RowPart(r, row, from, from + take));
          from += take;
        }
        ++row;
      }
    }
    if (!current.empty()) moves.push_back(std::move(current));
  }
  return moves;
}

}  // namespace shardwire::workflows
