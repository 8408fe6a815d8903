// The relay tree over engine replicas and the byte ranges a forward copies (src/workflows/relay_tree.h).
// Oracles: trees and ranges worked out by hand for small layouts.
#include "workflows/relay_tree.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

#include "shardwire/layout.h"

namespace shardwire::workflows {
namespace {

std::vector<TensorSpec> Tensors() { return {{"w", DType::kF32, {8, 4}}, {"norm", DType::kF32, {4}}}; }

TEST(RelayTree, ReplicasOfEachTpRankFormAKAryTreeInHeapOrder) {
  // tp=2, dp=4: ranks 0,2,4,6 hold TP rank 0's shards, 1,3,5,7 TP rank 1's.
  const Layout engine = MakeTpLayout(Tensors(), {0, -1}, 2, 4).value();
  const RelayTree chain = MakeRelayTree(engine, 1);
  EXPECT_EQ(chain.parent, (std::vector<int>{-1, -1, 0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(chain.children[0], (std::vector<int>{2}));
  EXPECT_EQ(chain.children[6], (std::vector<int>{}));
  const RelayTree binary = MakeRelayTree(engine, 2);
  // Group 0,2,4,6: 0 -> {2, 4}, 2 -> {6}.
  EXPECT_EQ(binary.parent, (std::vector<int>{-1, -1, 0, 1, 0, 1, 2, 3}));
  EXPECT_EQ(binary.children[0], (std::vector<int>{2, 4}));
  EXPECT_EQ(binary.children[3], (std::vector<int>{7}));
  EXPECT_TRUE(binary.Relays(0));
  EXPECT_TRUE(binary.Relays(7));
}

TEST(RelayTree, RanksWithoutAReplicaRelayNothing) {
  const Layout engine = MakeTpLayout(Tensors(), {0, -1}, 2, 1).value();
  const RelayTree tree = MakeRelayTree(engine, 4);
  EXPECT_EQ(tree.parent, (std::vector<int>{-1, -1}));
  EXPECT_FALSE(tree.Relays(0));
  EXPECT_FALSE(tree.Relays(1));
}

TEST(RelayTree, FanOutIsCappedAtWhatARelayPlanCarries) {
  // 300 replicas of one rank, K = 1000: without the cap the root would have 299 children, more
  // than RELAY_PLAN's one-byte count holds (every version of the tree then failed to decode).
  const Layout engine = MakeTpLayout(Tensors(), {0, -1}, 1, 300).value();
  const RelayTree tree = MakeRelayTree(engine, 1000);
  ASSERT_EQ(tree.children[0].size(), static_cast<std::size_t>(kMaxRelayFanout));
  EXPECT_EQ(tree.children[0].front(), 1);
  EXPECT_EQ(tree.children[0].back(), 255);
  // Ranks 256..299 hang below rank 1 (heap order: parent of r_i is r_((i - 1) / 255)).
  EXPECT_EQ(tree.children[1].size(), 44u);
  EXPECT_EQ(tree.parent[256], 1);
  EXPECT_EQ(tree.parent[299], 1);
  for (const auto& c : tree.children) EXPECT_LE(c.size(), static_cast<std::size_t>(kMaxRelayFanout));
  EXPECT_EQ(RelayDepth(tree, 0), 0);
  EXPECT_EQ(RelayDepth(tree, 255), 1);
  EXPECT_EQ(RelayDepth(tree, 299), 2);
}

TEST(RelayTree, DepthCountsTheAncestors) {
  const Layout engine = MakeTpLayout(Tensors(), {0, -1}, 1, 5).value();
  const RelayTree chain = MakeRelayTree(engine, 1);  // 0 -> 1 -> 2 -> 3 -> 4
  for (int r = 0; r < 5; ++r) EXPECT_EQ(RelayDepth(chain, r), r);
  const RelayTree binary = MakeRelayTree(engine, 2);  // 0 -> {1, 2}, 1 -> {3, 4}
  EXPECT_EQ(RelayDepth(binary, 2), 1);
  EXPECT_EQ(RelayDepth(binary, 4), 2);
  const Layout alone = MakeTpLayout(Tensors(), {0, -1}, 2, 1).value();
  EXPECT_EQ(RelayDepth(MakeRelayTree(alone, 1), 1), 0);
}

TEST(RelayTree, APlanNamingAnythingButTheTreesParentAndChildrenIsCorrupt) {
  // tp=2, dp=4, K = 2: group 0,2,4,6: 0 -> {2, 4}, 2 -> {6}; group 1,3,5,7 alike.
  const Layout engine = MakeTpLayout(Tensors(), {0, -1}, 2, 4).value();
  const RelayTree tree = MakeRelayTree(engine, 2);
  using Targets = std::vector<RelayTarget>;
  EXPECT_TRUE(CheckRelayPlan(tree, 0, std::nullopt, Targets{{2, 0, 0}, {4, 1, 0}}).ok());
  EXPECT_TRUE(CheckRelayPlan(tree, 2, 0u, Targets{{6, 0, 0}}).ok());
  EXPECT_TRUE(CheckRelayPlan(tree, 6, 2u, Targets{}).ok());
  EXPECT_TRUE(CheckRelayPlan(tree, 4, std::nullopt, Targets{}).ok());  // written directly
  const auto corrupt = [&](int rank, std::optional<std::uint32_t> from, const Targets& to, const std::string& what) {
    const Status st = CheckRelayPlan(tree, rank, from, to);
    EXPECT_EQ(st.code(), ErrorCode::kCorruptData) << st.ToString();
    EXPECT_NE(st.message().find(what), std::string::npos) << st.ToString();
  };
  corrupt(6, 0u, {}, "names engine rank 0 as the relay parent of engine rank 6, whose parent in the relay tree is 2");
  corrupt(0, 1u, {}, "whose parent in the relay tree is -1");               // a root has none
  corrupt(0, std::nullopt, {{3, 0, 0}}, "engine rank 3 as a relay child");  // another TP rank's replica
  corrupt(0, std::nullopt, {{6, 0, 0}}, "engine rank 6 as a relay child");  // a grandchild
  corrupt(0, std::nullopt, {{8, 0, 0}}, "engine rank 8 as a relay child");  // past the world
  corrupt(0, std::nullopt, {{0xFFFFFFFEu, 0, 0}}, "as a relay child");      // would be a negative rank
  corrupt(0, std::nullopt, {{2, 0, 0}, {2, 0, 0}}, "names relay child engine rank 2 twice");
}

TEST(RelayTree, WrittenRangesCoverEveryPushedByteOnceAndSkipPadding) {
  // One trainer rank (whole tensors) -> tp=2 rows of w {8, 5} F32 and a replicated norm {5}:
  // engine rank 0 holds w rows 0-3 (80 B at 0) and norm (20 B at the next 64-byte boundary,
  // 128); the 48 B between them are alignment padding the push never writes.
  const std::vector<TensorSpec> t{{"w", DType::kF32, {8, 5}}, {"norm", DType::kF32, {5}}};
  const Layout trainer = MakeFsdpLayout(t, 1).value();
  const Layout engine = MakeTpLayout(t, {0, -1}, 2, 1).value();
  ASSERT_EQ(engine.rank(0).shards[1].byte_offset, 128u);
  const PushConversion conversion = PushConversion::Create(trainer, engine).value();
  EXPECT_EQ(WrittenRanges(conversion, 0), (std::vector<ByteRange>{{0, 80}, {128, 20}}));
  // Two trainer ranks each write half of w's rows: their pieces merge into one range.
  const Layout fsdp2 = MakeFsdpLayout(t, 2).value();
  const PushConversion two = PushConversion::Create(fsdp2, engine).value();
  EXPECT_EQ(WrittenRanges(two, 1), (std::vector<ByteRange>{{0, 80}, {128, 20}}));
}

}  // namespace
}  // namespace shardwire::workflows
