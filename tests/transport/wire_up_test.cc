// Agent::WireUp: connects every lane to a peer before the first transfer.
#include <gtest/gtest.h>

#include <cmath>

#include "shardwire/agent.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

TEST(WireUp, ConnectsEveryLaneThenTransfersStillWork) {
  for (WritePath path : {WritePath::kAuto, WritePath::kActiveMessage}) {
    auto a = Agent::Create({.name = "initiator", .lanes = 2, .write_path = path});
    auto b = Agent::Create({.name = "target", .lanes = 2});
    ASSERT_TRUE(a.ok() && b.ok());
    auto ra = (*a)->AllocateArena(1 << 20);
    auto rb = (*b)->AllocateArena(1 << 20);
    ASSERT_TRUE(ra.ok() && rb.ok());
    EXPECT_EQ((*a)->WireUp("target", 5).code(), ErrorCode::kNotFound);  // not imported yet
    auto ma = (*a)->ExportMetadata();
    auto mb = (*b)->ExportMetadata();
    ASSERT_TRUE((*b)->ImportMetadata(*ma).ok());
    ASSERT_TRUE((*a)->ImportMetadata(*mb).ok());
    EXPECT_EQ((*a)->WireUp("target", std::nan("")).code(), ErrorCode::kInvalidArgument);
    Status st = (*a)->WireUp("target", 30);
    ASSERT_TRUE(st.ok()) << st.ToString();
    ASSERT_TRUE((*a)->WireUp("target", 30).ok());  // idempotent
    EXPECT_TRUE((*b)->TakeNotifications().empty()) << "WireUp must not notify the peer";
    testing::FillPattern((*a)->RegionBytes(*ra), 8);
    auto h = (*a)->PrepareTransfer(TransferOp::kWrite, "target", {{*ra, 0, *rb, 0, 1 << 20}}, std::nullopt);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    ASSERT_TRUE((*a)->Post(*h).ok());
    ASSERT_TRUE((*a)->Wait(*h, 30).ok());
    EXPECT_FALSE(testing::FirstMismatch((*b)->RegionBytes(*rb), 8).has_value());
    EXPECT_TRUE((*a)->Release(*h).ok());
    EXPECT_TRUE((*a)->Deregister(*ra).ok()) << "WireUp left a pin behind";
  }
}

}  // namespace
}  // namespace shardwire
