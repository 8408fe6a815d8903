#include "shardwire/layout.h"

#include <gtest/gtest.h>

namespace shardwire {
namespace {

using Ranges = std::vector<std::pair<std::int64_t, std::int64_t>>;

TEST(ChunkRanges, MatchesTorchChunk) {
  // torch.arange(10).chunk(4) -> sizes 3,3,3,1; torch.arange(5).chunk(4) -> 2,2,1 (3 chunks).
  EXPECT_EQ(ChunkRanges(10, 4), (Ranges{{0, 3}, {3, 6}, {6, 9}, {9, 10}}));
  EXPECT_EQ(ChunkRanges(5, 4), (Ranges{{0, 2}, {2, 4}, {4, 5}, {5, 5}}));
  EXPECT_EQ(ChunkRanges(2, 4), (Ranges{{0, 1}, {1, 2}, {2, 2}, {2, 2}}));
  EXPECT_EQ(ChunkRanges(8, 2), (Ranges{{0, 4}, {4, 8}}));
}

std::vector<TensorSpec> Tensors() {
  return {{"a", DType::kBF16, {10, 6}}, {"b", DType::kF32, {6}}, {"c", DType::kF32, {}}, {"d", DType::kBF16, {4, 8}}};
}

TEST(Layout, FsdpShardsDimZeroUnevenly) {
  auto layout = MakeFsdpLayout(Tensors(), 4);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  EXPECT_EQ(layout->description(), "fsdp=4");
  const RankShards& r3 = layout->rank(3);
  const ShardRef* a = r3.Find(0);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->box, (Box{{9, 0}, {1, 6}}));
  // b has 6 rows: chunks of 2 -> rank 3 holds nothing.
  EXPECT_EQ(r3.Find(1), nullptr);
  // The 0-d tensor lives on rank 0 only.
  EXPECT_NE(layout->rank(0).Find(2), nullptr);
  EXPECT_EQ(layout->rank(1).Find(2), nullptr);
  // Buffer placement: 64-byte aligned, in tensor order.
  const RankShards& r0 = layout->rank(0);
  ASSERT_EQ(r0.shards.size(), 4u);
  EXPECT_EQ(r0.shards[0].byte_offset, 0u);
  EXPECT_EQ(r0.shards[1].byte_offset, 64u);   // a: 3*6*2 = 36 bytes, rounded up
  EXPECT_EQ(r0.shards[2].byte_offset, 128u);  // b: 2*4 = 8 bytes
  EXPECT_EQ(r0.buffer_bytes, 192u + 1 * 8 * 2);
}

TEST(Layout, TpShardsByDimAndReplicates) {
  auto layout = MakeTpLayout(Tensors(), {0, -1, -1, 1}, 2, 2);
  ASSERT_TRUE(layout.ok()) << layout.status().ToString();
  EXPECT_EQ(layout->world_size(), 4);
  EXPECT_EQ(layout->description(), "tp=2,dp=2");
  EXPECT_EQ(layout->rank(3).Find(0)->box, (Box{{5, 0}, {5, 6}}));
  EXPECT_EQ(layout->rank(1).Find(3)->box, (Box{{0, 4}, {4, 4}}));
  EXPECT_EQ(layout->rank(2).Find(3)->box, (Box{{0, 0}, {4, 4}}));
  EXPECT_EQ(layout->rank(2).Find(1)->box, WholeBox({6}));
}

TEST(Layout, TpRejectsIndivisibleDimension) {
  auto layout = MakeTpLayout(Tensors(), {0, -1, -1, 1}, 3, 1);
  ASSERT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(layout.status().message().find("a BF16[10, 6]"), std::string::npos) << layout.status().message();
  EXPECT_FALSE(MakeTpLayout(Tensors(), {0, -1, -1, 1}, 0, 1).ok());
  EXPECT_FALSE(MakeFsdpLayout(Tensors(), 0).ok());
}

TEST(Layout, RejectsBoxOutsideTensor) {
  std::vector<std::vector<std::optional<LocalShard>>> boxes{{Box{{8}, {4}}}};
  auto layout = Layout::FromShards("custom", {{"x", DType::kF32, {10}}}, boxes);
  ASSERT_FALSE(layout.ok());
  EXPECT_NE(layout.status().message().find("rank 0"), std::string::npos);
}

// Found by review: a class entry's tensor index was range-checked only after the entries were
// sorted by it, so the sort read past the end of the position table (ASan: heap overflow).
TEST(Layout, RejectsATensorIndexOutOfRangeBeforeUsingIt) {
  std::vector<std::vector<ShardEntry>> classes{{{0, LocalShard(Box{{0}, {10}})}, {7, LocalShard(Box{{0}, {10}})}}};
  auto layout = Layout::FromRankClasses("custom", {{"x", DType::kF32, {10}}}, classes, {0});
  ASSERT_FALSE(layout.ok());
  EXPECT_EQ(layout.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(layout.status().message().find("tensor index 7 out of range"), std::string::npos)
      << layout.status().message();
}

TEST(Layout, RejectsATensorNameListedTwice) {
  // Tensors are matched by name: a duplicate would plan by position in one order and fail as
  // "missing" in another (found by review, session 35). Rejected when the layout is built.
  std::vector<TensorSpec> tensors = Tensors();
  tensors.push_back({"b", DType::kF32, {6}});
  for (auto layout : {MakeFsdpLayout(tensors, 2), MakeTpLayout(tensors, {0, -1, -1, 1, -1}, 2, 1)}) {
    ASSERT_FALSE(layout.ok());
    EXPECT_EQ(layout.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(layout.status().message().find("'b' is listed twice (tensors 1 and 4)"), std::string::npos)
        << layout.status().message();
  }
  EXPECT_TRUE(MakeFsdpLayout(Tensors(), 2).ok());
}

}  // namespace
}  // namespace shardwire
