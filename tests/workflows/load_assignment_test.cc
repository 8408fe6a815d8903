// How a load's bytes are divided among source instances, against brute-force byte maps.
#include "workflows/load_assignment.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
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

TEST(LoadAssignment, ClipAndCutKeepTheSourceMapping) {
  const std::vector<SourceRun> coverage = {{0, 100, 0, 1000}, {100, 50, 1, 0}, {200, 100, 0, 5000}};
  const std::vector<Interval> want = {{50, 120}, {250, 260}};
  const auto clipped = Clip(coverage, want);
  std::map<std::uint64_t, std::pair<std::uint32_t, std::uint64_t>> bytes;  // dst -> (rank, src)
  for (const SourceRun& r : clipped) {
    for (std::uint64_t k = 0; k < r.length; ++k) bytes[r.dst_offset + k] = {r.src_rank, r.src_offset + k};
  }
  ASSERT_EQ(bytes.size(), 80u);
  EXPECT_EQ(bytes.at(50), std::make_pair(0u, std::uint64_t{1050}));
  EXPECT_EQ(bytes.at(110), std::make_pair(1u, std::uint64_t{10}));
  EXPECT_EQ(bytes.at(259), std::make_pair(0u, std::uint64_t{5059}));
  EXPECT_EQ(bytes.count(120), 0u);
  const auto moves = CutMoves(clipped, 16);
  std::uint64_t total = 0;
  for (const auto& m : moves) {
    std::uint64_t b = 0;
    for (const SourceRun& r : m) {
      EXPECT_EQ(r.src_rank, m.front().src_rank);
      b += r.length;
    }
    EXPECT_LE(b, 16u);
    total += b;
  }
  EXPECT_EQ(total, 80u);
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
    for (std::size_t i = 0; i < cov->size(); ++i) {
      covered += (*cov)[i].length;
      if (i > 0) {
        EXPECT_LE((*cov)[i - 1].dst_offset + (*cov)[i - 1].length, (*cov)[i].dst_offset);
      }
    }
    EXPECT_EQ(covered, needed);
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
      for (std::size_t i = 0; i < cov->size(); ++i) {
        const SourceRun& r = (*cov)[i];
        if (i > 0) {
          EXPECT_LE((*cov)[i - 1].dst_offset + (*cov)[i - 1].length, r.dst_offset) << from << " -> " << to;
        }
        ASSERT_LE(r.src_offset + r.length, src_bufs[r.src_rank].size());
        ASSERT_LE(r.dst_offset + r.length, rebuilt.size());
        std::memcpy(rebuilt.data() + r.dst_offset, src_bufs[r.src_rank].data() + r.src_offset, r.length);
      }
      EXPECT_TRUE(rebuilt == expected) << from << " -> " << to << " rank " << rank;
    }
  }
  std::filesystem::remove_all(dir);
}

// Expands strided runs back to one run per row (the oracle for GroupStrided).
std::vector<SourceRun> Expand(const std::vector<StridedSourceRun>& groups, std::uint32_t src_rank) {
  std::vector<SourceRun> out;
  for (const StridedSourceRun& g : groups) {
    for (std::uint64_t i = 0; i < g.count; ++i) {
      out.push_back({g.dst_offset + i * g.dst_stride, g.length, src_rank, g.src_offset + i * g.src_stride});
    }
  }
  return out;
}

TEST(LoadAssignment, GroupStridedRegroupsRowsAndNeverOverlaps) {
  // Rows of 8 bytes, 16 apart at the source, packed at the target; then a run of
  // another length; then rows whose source goes backwards (not a valid stride).
  const std::vector<SourceRun> runs = {{0, 8, 0, 100},  {8, 8, 0, 116},  {16, 8, 0, 132}, {24, 8, 0, 148},
                                       {32, 5, 0, 400}, {40, 4, 0, 900}, {44, 4, 0, 800}, {48, 4, 0, 700}};
  const auto groups = GroupStrided(runs);
  ASSERT_EQ(groups.size(), 5u);
  EXPECT_EQ(groups[0], (StridedSourceRun{0, 100, 8, 4, 8, 16}));
  EXPECT_EQ(groups[1], (StridedSourceRun{32, 400, 5, 1, 0, 0}));
  EXPECT_EQ(groups[2].count, 1u);  // 900 then 800: the source stride would be negative
  EXPECT_EQ(Expand(groups, 0), runs);
  for (const auto& g : groups) {
    if (g.count > 1) {
      EXPECT_GE(g.dst_stride, g.length);
      EXPECT_GE(g.src_stride, g.length);
    }
  }
}

TEST(LoadAssignment, GroupStridedMakesRowParallelShardsOneDescriptorEach) {
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
    std::size_t runs = 0, descriptors = 0;
    for (const auto& move : CutMoves(*cov, 1u << 20)) {
      const auto groups = GroupStrided(move);
      EXPECT_EQ(Expand(groups, move.front().src_rank), move);
      runs += move.size();
      descriptors += groups.size();
    }
    // A row-parallel shard (o_proj, down_proj: 64 rows each, 2 layers) is one
    // group, so far fewer descriptors than runs (one per row: >= 256).
    EXPECT_GE(runs, 256u) << "rank " << rank;
    EXPECT_LT(descriptors * 8, runs) << "rank " << rank;
  }
}

}  // namespace
}  // namespace shardwire::workflows
