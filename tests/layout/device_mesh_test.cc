#include "shardwire/device_mesh.h"

#include <gtest/gtest.h>

namespace shardwire {
namespace {

TEST(DeviceMesh, RowMajorCoordinates) {
  auto mesh = DeviceMesh::Create({{"dp", 2}, {"tp", 3}});
  ASSERT_TRUE(mesh.ok());
  EXPECT_EQ(mesh->size(), 6);
  EXPECT_EQ(mesh->Coordinates(4), (std::vector<int>{1, 1}));
  EXPECT_EQ(*mesh->DimIndex("tp"), 1);
  EXPECT_EQ(mesh->DimIndex("ep").status().code(), ErrorCode::kNotFound);
}

// Found by review: the rank count was an unchecked int product; 65536 x 65537 wrapped to a
// mesh of 65536 ranks, every one at coordinate a = 0.
TEST(DeviceMesh, AMeshOfMoreRanksThanAnIntHoldsIsRefused) {
  auto mesh = DeviceMesh::Create({{"a", 65536}, {"b", 65537}});
  ASSERT_FALSE(mesh.ok());
  EXPECT_EQ(mesh.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(mesh.status().message().find("dimension b"), std::string::npos) << mesh.status().message();
  EXPECT_TRUE(DeviceMesh::Create({{"a", 65536}, {"b", 32767}}).ok());
}

// DTensor: Shard(0) on both mesh dims of a [10] tensor applies in mesh order: first
// chunk(2) -> [0:5], [5:10]; then each chunk(2) -> [0:3], [3:5], [5:8], [8:10].
TEST(DeviceMesh, TwoMeshDimsShardOneTensorDimInMeshOrder) {
  auto mesh = DeviceMesh::Create({{"a", 2}, {"b", 2}});
  ASSERT_TRUE(mesh.ok());
  const std::vector<Placement> p{Placement::Shard(0), Placement::Shard(0)};
  const std::pair<std::int64_t, std::int64_t> expected[] = {{0, 3}, {3, 2}, {5, 3}, {8, 2}};
  for (int r = 0; r < 4; ++r) {
    auto box = LocalBox({10}, *mesh, p, r);
    ASSERT_TRUE(box.ok() && box->has_value());
    EXPECT_EQ((*box)->offset[0], expected[r].first) << r;
    EXPECT_EQ((*box)->shape[0], expected[r].second) << r;
  }
}

TEST(DeviceMesh, UnevenChunksMayBeEmptyAndReplicateKeepsAll) {
  auto mesh = DeviceMesh::Create({{"dp", 4}, {"tp", 2}});
  ASSERT_TRUE(mesh.ok());
  // torch.chunk(3 rows, 4) -> 1, 1, 1, (none).
  const std::vector<Placement> p{Placement::Shard(0), Placement::Replicate()};
  EXPECT_FALSE(LocalBox({3, 4}, *mesh, p, 6)->has_value());  // dp coordinate 3
  EXPECT_EQ(**LocalBox({3, 4}, *mesh, p, 5), (Box{{2, 0}, {1, 4}}));
  const std::vector<Placement> q{Placement::Replicate(), Placement::Shard(1)};
  EXPECT_EQ(**LocalBox({3, 4}, *mesh, q, 3), (Box{{0, 2}, {3, 2}}));
}

}  // namespace
}  // namespace shardwire
