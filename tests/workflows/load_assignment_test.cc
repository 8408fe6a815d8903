// How a load's bytes are divided among source instances, against brute-force byte maps.
#include "workflows/load_assignment.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <limits>
#include <map>

#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/model_config.h"
#include "shardwire/model_layouts.h"
#include "shardwire/shard_io.h"

namespace shardwire::workflows {
namespace {

TEST(LoadAssignment, SplitEvenlyCoversEveryByteOnceInOrder) {
  const std::vector<Interval> in = {{0, 10}, {20, 23}, {100, 200}};
  for (std::size_t parts : {1u, 2u, 3u, 7u, 200u}) {
    const auto out = SplitEvenly(in, parts);
    ASSERT_EQ(out.size(), parts);
    std::vector<Interval> all;
    std::uint64_t min = ~0ull, max = 0;
    for (const auto& p : out) {
      all.insert(all.end(), p.begin(), p.end());
      min = std::min(min, TotalBytes(p));
      max = std::max(max, TotalBytes(p));
    }
    EXPECT_EQ(Normalize(all), in) << parts;
    EXPECT_LE(max - min, 1u) << parts;
    // Portions are consecutive: every byte of portion k lies before every byte of k + 1.
    std::uint64_t last_end = 0;
    for (const auto& p : out) {
      for (const Interval& i : p) {
        EXPECT_GE(i.begin, last_end);
        last_end = i.end;
      }
    }
  }
}

// Byte map of runs: destination byte -> (source rank, source byte); a byte twice fails.
using ByteMap = std::map<std::uint64_t, std::pair<std::uint32_t, std::uint64_t>>;
ByteMap BytesOf(const std::vector<SourceRun>& runs) {
  ByteMap bytes;
  for (const SourceRun& r : runs) {
    if (r.count > 1) {
      EXPECT_GE(r.dst_stride, r.length);
      EXPECT_GE(r.src_stride, r.length);
    }
    ForEachRow(r, [&](std::uint64_t dst, std::uint64_t src, std::uint64_t n) {
      for (std::uint64_t k = 0; k < n; ++k) {
        EXPECT_TRUE(bytes.emplace(dst + k, std::make_pair(r.src_rank, src + k)).second) << "byte " << dst + k;
      }
    });
  }
  return bytes;
}

ByteMap Restrict(const ByteMap& all, const std::vector<Interval>& intervals) {
  ByteMap out;
  for (const Interval& iv : intervals) out.insert(all.lower_bound(iv.begin), all.lower_bound(iv.end));
  return out;
}

// Every move comes from one source rank and holds exactly move_bytes, but the last
// move of each rank; together the moves are `runs`, byte for byte.
void ExpectMovesAre(const std::vector<SourceRun>& runs, std::uint64_t move_bytes) {
  const auto moves = CutMoves(runs, move_bytes);
  std::vector<SourceRun> all;
  for (std::size_t i = 0; i < moves.size(); ++i) {
    const auto& m = moves[i];
    ASSERT_FALSE(m.empty());
    std::uint64_t b = 0;
    for (const SourceRun& r : m) {
      EXPECT_EQ(r.src_rank, m.front().src_rank);
      b += r.bytes();
    }
    const bool last_of_rank = i + 1 == moves.size() || moves[i + 1].front().src_rank != m.front().src_rank;
    if (last_of_rank) {
      EXPECT_LE(b, move_bytes);
    } else {
      EXPECT_EQ(b, move_bytes) << "move " << i;
    }
    all.insert(all.end(), m.begin(), m.end());
  }
  EXPECT_EQ(BytesOf(all), BytesOf(runs));
}

TEST(LoadAssignment, ClipAndCutKeepTheSourceMapping) {
  const std::vector<SourceRun> coverage = {{0, 100, 0, 1000}, {100, 50, 1, 0}, {200, 100, 0, 5000}};
  const std::vector<Interval> want = {{50, 120}, {250, 260}};
  const auto clipped = Clip(coverage, want);
  const ByteMap bytes = BytesOf(clipped);
  ASSERT_EQ(bytes.size(), 80u);
  EXPECT_EQ(bytes.at(50), std::make_pair(0u, std::uint64_t{1050}));
  EXPECT_EQ(bytes.at(110), std::make_pair(1u, std::uint64_t{10}));
  EXPECT_EQ(bytes.at(259), std::make_pair(0u, std::uint64_t{5059}));
  EXPECT_EQ(bytes.count(120), 0u);
  EXPECT_EQ(bytes, Restrict(BytesOf(coverage), want));
  ExpectMovesAre(clipped, 16);
}

// Strided runs whose rows interleave at the destination (a row assembled from two
// source ranks, as tp=4 -> tp=2 row-parallel shards are), clipped by intervals that cut
// rows and gaps, and cut into moves that end inside rows: the same bytes from the same
// source bytes, against a byte map.
TEST(LoadAssignment, StridedRunsClipAndCutByteForByte) {
  // Destination rows of 12 bytes: bytes 0-7 from rank 0 (rows 16 apart there), 8-11 from
  // rank 1 (rows 4 apart: packed); 10 rows. Then a contiguous run of rank 1.
  const std::vector<SourceRun> coverage = {{0, 8, 0, 100, 10, 12, 16}, {8, 4, 1, 0, 10, 12, 4}, {120, 30, 1, 500}};
  const ByteMap all = BytesOf(coverage);
  ASSERT_EQ(all.size(), 150u);
  EXPECT_EQ(TotalBytes(IntervalsOf(coverage)), 150u);
  EXPECT_EQ(IntervalsOf(coverage), (std::vector<Interval>{{0, 150}}));
  const std::vector<std::vector<Interval>> cases = {
      {{0, 150}},                      // everything
      {{3, 5}},                        // inside one row piece
      {{5, 40}},                       // cuts a rank-0 row at both ends
      {{9, 10}, {20, 21}, {30, 129}},  // rank-1 pieces, gaps, into the contiguous run
      {{0, 1}, {11, 13}, {119, 121}},  // single bytes at row edges
      {{60, 61}, {62, 150}},
  };
  for (const auto& want : cases) {
    const auto clipped = Clip(coverage, want);
    EXPECT_TRUE(std::is_sorted(clipped.begin(), clipped.end(),
                               [](const SourceRun& a, const SourceRun& b) { return a.dst_offset < b.dst_offset; }));
    EXPECT_EQ(BytesOf(clipped), Restrict(all, want)) << want.front().begin;
    for (std::uint64_t move_bytes : {1u, 5u, 8u, 13u, 64u, 1000u}) ExpectMovesAre(clipped, move_bytes);
  }
  // Rows held whole by an interval stay one strided run.
  const auto whole = Clip(coverage, {{0, 150}});
  EXPECT_EQ(whole, coverage);
  // Cutting keeps strides: 10 rows of 8 bytes of rank 0 in moves of 32 bytes are 3
  // runs of 4, 4 and 2 rows.
  const auto cut = CutMoves({coverage[0]}, 32);
  ASSERT_EQ(cut.size(), 3u);
  EXPECT_EQ(cut[0], (std::vector<SourceRun>{{0, 8, 0, 100, 4, 12, 16}}));
  EXPECT_EQ(cut[2], (std::vector<SourceRun>{{96, 8, 0, 228, 2, 12, 16}}));
  // The destination intervals of a strided run: one per row unless rows touch.
  std::vector<Interval> iv;
  AppendIntervals(coverage[1], iv);
  EXPECT_EQ(iv.size(), 10u);
  iv.clear();
  AppendIntervals({0, 4, 0, 0, 5, 4, 16}, iv);
  EXPECT_EQ(iv, (std::vector<Interval>{{0, 20}}));
}

// A capped source's moves: one lease's worth, at least 64 KiB, never more than move_bytes
// (std::clamp(lease, 64 KiB, move_bytes), before session 39's fix, was undefined below 64 KiB
// and gave 64 KiB moves).
TEST(LoadAssignment, CappedMovesAreOneLeaseBetween64KiBAndMoveBytes) {
  constexpr std::uint64_t kMiB = 1u << 20;
  EXPECT_EQ(CappedMoveBytes(1e6, 0.5, 4 * kMiB), 500000u);    // one lease
  EXPECT_EQ(CappedMoveBytes(1e9, 0.5, 4 * kMiB), 4 * kMiB);   // capped by move_bytes
  EXPECT_EQ(CappedMoveBytes(1e3, 0.5, 4 * kMiB), 64u << 10);  // a tiny lease: 64 KiB
  EXPECT_EQ(CappedMoveBytes(1e3, 0.5, 4096), 4096u);          // move_bytes below 64 KiB wins
  EXPECT_EQ(CappedMoveBytes(1e6, 0.5, 4096), 4096u);
  EXPECT_EQ(CappedMoveBytes(std::numeric_limits<double>::infinity(), 0.5, 4 * kMiB), 4 * kMiB);
  EXPECT_EQ(CappedMoveBytes(1e300, 1e300, 4 * kMiB), 4 * kMiB);
  EXPECT_EQ(CappedMoveBytes(1e6, 0.0, 4 * kMiB), 64u << 10);
}

TEST(LoadAssignment, CoverageOfRowParallelShardsIsExact) {
  auto config = ParseModelConfig(R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
      "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 128,
      "torch_dtype": "float32"})",
                                 "t");
  auto model = DescribeModel(*config);
  auto src = MakeLayoutFromString(*model, "tp=2");
  auto dst = MakeLayoutFromString(*model, "tp=4");
  for (int rank = 0; rank < 4; ++rank) {
    auto cov = CoverageOf(*src, *dst, rank);
    ASSERT_TRUE(cov.ok()) << cov.status().ToString();
    // Every byte of every shard of the destination rank is covered exactly once.
    std::uint64_t needed = 0;
    for (const ShardRef& s : dst->rank(rank).shards) {
      needed += static_cast<std::uint64_t>(s.box.numel()) * 4;
    }
    std::uint64_t covered = 0;
    for (const SourceRun& r : *cov) covered += r.bytes();
    EXPECT_EQ(covered, needed);
    EXPECT_EQ(BytesOf(*cov).size(), needed);  // no byte twice
    EXPECT_EQ(TotalBytes(IntervalsOf(*cov)), needed);
  }
}

// CoverageOf against the bytes themselves: copying every run from the source ranks' buffers
// (filled from a generated checkpoint) rebuilds the destination rank's buffer as loaded from
// the checkpoint directly. Both directions of a row-parallel split (tp=4 -> tp=2: a
// destination row is assembled from two source ranks, whose moves interleave).
TEST(LoadAssignment, CoverageOfRebuildsTheDestinationBytes) {
  auto config = ParseModelConfig(R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
      "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 128,
      "torch_dtype": "float32"})",
                                 "t");
  ASSERT_TRUE(config.ok());
  auto model = DescribeModel(*config);
  ASSERT_TRUE(model.ok());
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("sw-coverage-" + std::to_string(::getpid()));
  ASSERT_TRUE(GenerateCheckpointDirectory(*model, dir.string(), {.seed = 11}).ok());
  auto ck = Checkpoint::Open(dir.string());
  ASSERT_TRUE(ck.ok());
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"tp=4", "tp=2"}, {"tp=2", "tp=4"}, {"tp=1", "tp=4"}, {"tp=4", "tp=1"}}) {
    auto src = MakeLayoutFromString(*model, from);
    auto dst = MakeLayoutFromString(*model, to);
    ASSERT_TRUE(src.ok() && dst.ok());
    std::vector<std::vector<std::byte>> src_bufs;
    for (int r = 0; r < src->world_size(); ++r) {
      src_bufs.emplace_back(src->rank(r).buffer_bytes);
      ASSERT_TRUE(LoadShardsFromCheckpoint(*ck, *src, r, src_bufs.back()).ok());
    }
    for (int rank = 0; rank < dst->world_size(); ++rank) {
      std::vector<std::byte> expected(dst->rank(rank).buffer_bytes), rebuilt(dst->rank(rank).buffer_bytes);
      ASSERT_TRUE(LoadShardsFromCheckpoint(*ck, *dst, rank, expected).ok());
      auto cov = CoverageOf(*src, *dst, rank);
      ASSERT_TRUE(cov.ok()) << cov.status().ToString();
      std::uint64_t covered = 0;
      for (const SourceRun& r : *cov) {
        ForEachRow(r, [&](std::uint64_t to_byte, std::uint64_t from_byte, std::uint64_t n) {
          ASSERT_LE(from_byte + n, src_bufs[r.src_rank].size());
          ASSERT_LE(to_byte + n, rebuilt.size());
          std::memcpy(rebuilt.data() + to_byte, src_bufs[r.src_rank].data() + from_byte, n);
        });
        covered += r.bytes();
      }
      EXPECT_EQ(covered, rebuilt.size()) << from << " -> " << to << " rank " << rank;  // each byte once
      EXPECT_TRUE(rebuilt == expected) << from << " -> " << to << " rank " << rank;
    }
  }
  std::filesystem::remove_all(dir);
}

// A row-parallel shard reaches the transport as one strided run per source shard and
// move, not one run per row.
TEST(LoadAssignment, RowParallelShardsStayStridedThroughClipAndCut) {
  auto config = ParseModelConfig(R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 128,
      "torch_dtype": "bfloat16"})",
                                 "t");
  auto model = DescribeModel(*config);
  auto src = MakeLayoutFromString(*model, "tp=2");
  auto dst = MakeLayoutFromString(*model, "tp=4");
  for (int rank = 0; rank < 4; ++rank) {
    auto cov = CoverageOf(*src, *dst, rank);
    ASSERT_TRUE(cov.ok()) << cov.status().ToString();
    std::uint64_t rows = 0, runs = 0;
    const auto clipped = Clip(*cov, IntervalsOf(*cov));
    EXPECT_EQ(clipped, *cov);
    for (const auto& move : CutMoves(clipped, 1u << 20)) {
      for (const SourceRun& r : move) rows += r.count;
      runs += move.size();
    }
    // o_proj and down_proj: 64 rows each, 2 layers, so >= 256 rows; far fewer runs.
    EXPECT_GE(rows, 256u) << "rank " << rank;
    EXPECT_LT(runs * 8, rows) << "rank " << rank;
    ExpectMovesAre(*cov, 1000);
  }
}

}  // namespace
}  // namespace shardwire::workflows
