#include "workflows/replica_fanout.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include <fmt/format.h>

#include "core/streaming_store.h"
#include "core/thread_cpu_time.h"
#include "workflows/push_workers.h"

namespace shardwire::workflows {

namespace {

// A worker's unit: whole moves [move_begin, move_end) of a group, or (`whole` false) rows
// [row_begin, row_end) and row bytes [col_begin, col_end) of the single move move_begin.
struct Piece {
  std::size_t group = 0;
  std::uint64_t move_begin = 0, move_end = 0;
  bool whole = true;
  std::uint64_t row_begin = 0, row_end = 0, col_begin = 0, col_end = 0;
};

std::vector<Piece> Pieces(const std::vector<FanoutGroup>& groups) {
  std::vector<Piece> pieces;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const std::vector<Move>& moves = *groups[g].moves;
    std::uint64_t run_begin = 0, run_bytes = 0;  // consecutive small moves share a piece
    auto close_run = [&](std::uint64_t end) {
      if (end > run_begin) pieces.push_back({.group = g, .move_begin = run_begin, .move_end = end});
      run_begin = end;
      run_bytes = 0;
    };
    for (std::uint64_t i = 0; i < moves.size(); ++i) {
      const Move& m = moves[i];
      if (m.bytes() < kFanoutPieceBytes) {
        if (run_bytes + m.bytes() > kFanoutPieceBytes) close_run(i);
        run_bytes += m.bytes();
        continue;
      }
      close_run(i);
      if (m.length >= kFanoutPieceBytes) {  // a long row: split along it
        for (std::uint64_t row = 0; row < m.count; ++row) {
          for (std::uint64_t c = 0; c < m.length; c += kFanoutPieceBytes) {
            pieces.push_back({.group = g,
                              .move_begin = i,
                              .move_end = i + 1,
                              .whole = false,
                              .row_begin = row,
                              .row_end = row + 1,
                              .col_begin = c,
                              .col_end = std::min(m.length, c + kFanoutPieceBytes)});
          }
        }
      } else {  // many short rows: a few of them per piece
        const std::uint64_t rows = std::max<std::uint64_t>(1, kFanoutPieceBytes / m.length);
        for (std::uint64_t row = 0; row < m.count; row += rows) {
          pieces.push_back({.group = g,
                            .move_begin = i,
                            .move_end = i + 1,
                            .whole = false,
                            .row_begin = row,
                            .row_end = std::min(m.count, row + rows),
                            .col_begin = 0,
                            .col_end = m.length});
        }
      }
      run_begin = i + 1;
    }
    close_run(moves.size());
  }
  return pieces;
}

const std::byte* SourceAt(const FanoutSource& source, std::uint64_t plan_offset) {
  return plan_offset < source.weights.size() ? source.weights.data() + plan_offset
                                             : source.scratch.data() + (plan_offset - source.weights.size());
}

// Bytes [col_begin, col_end) of one row into every destination, a chunk at a time.
void CopyRow(const std::vector<std::byte*>& destinations, std::uint64_t dst_offset, const std::byte* src,
             std::uint64_t col_begin, std::uint64_t col_end) {
  for (std::uint64_t c = col_begin; c < col_end; c += kFanoutChunkBytes) {
    const std::uint64_t n = std::min(kFanoutChunkBytes, col_end - c);
    for (std::byte* base : destinations) {
      if (n >= kMinStreamCopyBytes) {
        StreamCopy(base + dst_offset + c, src + c, n);
      } else {
        std::memcpy(base + dst_offset + c, src + c, n);
      }
    }
  }
}

// Copies one piece; returns the source bytes it read.
std::uint64_t CopyPiece(const FanoutGroup& group, const Piece& p, const FanoutSource& source) {
  std::uint64_t read = 0;
  for (std::uint64_t i = p.move_begin; i < p.move_end; ++i) {
    const Move& m = (*group.moves)[i];
    const std::uint64_t row_begin = p.whole ? 0 : p.row_begin, row_end = p.whole ? m.count : p.row_end;
    const std::uint64_t col_begin = p.whole ? 0 : p.col_begin, col_end = p.whole ? m.length : p.col_end;
    const std::byte* src = SourceAt(source, m.src_offset);
    for (std::uint64_t row = row_begin; row < row_end; ++row) {
      CopyRow(group.destinations, m.dst_offset + row * m.dst_stride, src + row * m.src_stride, col_begin, col_end);
    }
    read += (row_end - row_begin) * (col_end - col_begin);
  }
  return read;
}

}  // namespace

Status CheckFanoutSource(const std::vector<Move>& moves, const FanoutSource& source) {
  for (std::size_t i = 0; i < moves.size(); ++i) {
    const Move& m = moves[i];
    if (m.count == 0 || m.length == 0) continue;
    const bool in_scratch = m.src_offset >= source.weights.size();
    const std::uint64_t offset = in_scratch ? m.src_offset - source.weights.size() : m.src_offset;
    const std::uint64_t size = in_scratch ? source.scratch.size() : source.weights.size();
    std::uint64_t span = 0, end = 0;
    if (__builtin_mul_overflow(m.count - 1, m.src_stride, &span) || __builtin_add_overflow(span, m.length, &span) ||
        __builtin_add_overflow(offset, span, &end) || end > size) {
      return InvalidArgument(fmt::format(
          "move {} ({} rows of {} bytes, stride {} bytes) reads bytes [{}, +{}) of the trainer's {} ({} bytes)", i,
          m.count, m.length, m.src_stride, offset, span, in_scratch ? "reduction scratch" : "shard buffer", size));
    }
  }
  return Status::Ok();
}

FanoutStats CopyToReplicas(const std::vector<FanoutGroup>& groups, const FanoutSource& source, std::size_t workers) {
  const std::vector<Piece> pieces = Pieces(groups);
  workers = std::clamp<std::size_t>(workers, 1, std::max<std::size_t>(1, pieces.size()));
  std::atomic<std::size_t> next{0};
  std::vector<FanoutStats> per_worker(workers);
  RunOnWorkers(workers, [&](std::size_t w) {
    const double cpu0 = ThreadCpuSeconds();
    FanoutStats& mine = per_worker[w];
    for (std::size_t i = next++; i < pieces.size(); i = next++) {
      const FanoutGroup& group = groups[pieces[i].group];
      const std::uint64_t read = CopyPiece(group, pieces[i], source);
      mine.bytes_read += read;
      mine.bytes_written += read * group.destinations.size();
    }
    StreamFence();  // visible to the engines before the caller reports the version written
    mine.cpu_s = ThreadCpuSeconds() - cpu0;
  });
  FanoutStats total;
  for (const FanoutStats& s : per_worker) {
    total.bytes_read += s.bytes_read;
    total.bytes_written += s.bytes_written;
    total.cpu_s += s.cpu_s;
  }
  return total;
}

}  // namespace shardwire::workflows
