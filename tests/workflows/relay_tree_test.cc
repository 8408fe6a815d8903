// The relay tree over engine replicas and the byte ranges a forward copies (src/workflows/relay_tree.h).
// Oracles: trees and ranges worked out by hand for small layouts.
#include "workflows/relay_tree.h"

#include <gtest/gtest.h>

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
