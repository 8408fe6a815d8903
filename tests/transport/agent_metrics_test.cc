// AgentOptions::metrics: the bytes-by-peer counter equals the bytes a real transfer moved (two
// agents over UCX in this process; the bytes are checked at the destination, and the count
// against the lanes' own AgentStats), transfers are counted per post, and a post that fails is
// counted under its error code. Counted, not timed.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "shardwire/agent.h"
#include "shardwire/metrics.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing::FillPattern;
using testing::FirstMismatch;

std::uint64_t MovedBytes(const AgentStats& s) { return s.direct_copy_bytes + s.ucx_bytes + s.kernel_copy_bytes; }

Counter Series(MetricsRegistry& r, const std::string& name, const LabelValues& labels) {
  auto f = r.AddCounter(name, "", labels.size() == 3 ? std::vector<std::string>{"agent", "peer", "op"}
                                                     : std::vector<std::string>{"agent", "peer", "op", "code"});
  EXPECT_TRUE(f.ok()) << f.status().ToString();
  return f.ok() ? (*f)->Labels(labels) : Counter();
}

TEST(AgentMetrics, BytesByPeerEqualTheBytesARealTransferMoved) {
  MetricsRegistry registry;
  const std::size_t bytes = 4u << 20;
  auto w = Agent::Create({.name = "writer", .lanes = 2, .metrics = &registry});
  auto t = Agent::Create({.name = "target", .lanes = 2});  // no registry: reports nothing
  ASSERT_TRUE(w.ok() && t.ok());
  Agent& writer = **w;
  Agent& target = **t;
  auto src = writer.AllocateArena(bytes);
  auto dst = target.AllocateArena(bytes);
  ASSERT_TRUE(src.ok() && dst.ok());
  FillPattern(writer.RegionBytes(*src), 5);
  std::memset(target.RegionBytes(*dst).data(), 0, bytes);
  ASSERT_TRUE(target.ImportMetadata(*writer.ExportMetadata()).ok());
  ASSERT_TRUE(writer.ImportMetadata(*target.ExportMetadata()).ok());

  // A contiguous 3 MiB range plus 100 strided rows of 1000 bytes: 3 MiB + 100,000 bytes per post.
  const std::vector<TransferDescriptor> writes{{*src, 0, *dst, 0, 3u << 20},
                                               {*src, 3u << 20, *dst, 3u << 20, 1000, 100, 4000, 2000}};
  std::uint64_t per_post = 0;
  for (const auto& d : writes) per_post += d.bytes();
  auto hw = writer.PrepareTransfer(TransferOp::kWrite, "target", writes, std::nullopt);
  ASSERT_TRUE(hw.ok()) << hw.status().ToString();
  const AgentStats s0 = writer.Stats();
  for (int post = 0; post < 3; ++post) {
    ASSERT_TRUE(writer.Post(*hw).ok());
    ASSERT_TRUE(writer.Wait(*hw, 30).ok());
  }
  const AgentStats s1 = writer.Stats();
  // The bytes landed: the contiguous range and every strided row.
  const auto landed = target.RegionBytes(*dst);
  ASSERT_FALSE(FirstMismatch(landed.first(3u << 20), 5).has_value());
  for (std::uint64_t r = 0; r < 100; ++r)
    ASSERT_FALSE(FirstMismatch(landed.subspan((3u << 20) + r * 2000, 1000), 5, (3u << 20) + r * 4000).has_value())
        << "row " << r;
  const Counter write_bytes = Series(registry, "shardwire_transport_bytes_total", {"writer", "target", "WRITE"});
  EXPECT_EQ(write_bytes.value(), 3 * per_post);
  EXPECT_EQ(write_bytes.value(), MovedBytes(s1) - MovedBytes(s0)) << "the lanes' own count of bytes moved";
  EXPECT_EQ(Series(registry, "shardwire_transport_transfers_total", {"writer", "target", "WRITE"}).value(), 3u);

  // A READ of 1 MiB back from the target, into the upper part of the writer's region.
  std::memset(writer.RegionBytes(*src).data() + (3u << 20), 0, 1u << 20);
  const std::vector<TransferDescriptor> reads{{*src, 3u << 20, *dst, 0, 1u << 20}};
  auto hr = writer.PrepareTransfer(TransferOp::kRead, "target", reads, std::nullopt);
  ASSERT_TRUE(hr.ok()) << hr.status().ToString();
  ASSERT_TRUE(writer.Post(*hr).ok());
  ASSERT_TRUE(writer.Wait(*hr, 30).ok());
  EXPECT_FALSE(FirstMismatch(writer.RegionBytes(*src).subspan(3u << 20, 1u << 20), 5).has_value());
  EXPECT_EQ(Series(registry, "shardwire_transport_bytes_total", {"writer", "target", "READ"}).value(), 1u << 20);
  EXPECT_EQ(write_bytes.value(), 3 * per_post) << "a READ is not a WRITE";

  // The rendered text carries the same figure.
  const std::string text = registry.Render();
  EXPECT_NE(text.find("shardwire_transport_bytes_total{agent=\"writer\",peer=\"target\",op=\"WRITE\"} " +
                      std::to_string(3 * per_post) + "\n"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("agent=\"target\""), std::string::npos) << "the target has no registry";

  // A post to an invalidated peer fails and is counted under its code; nothing more is moved.
  ASSERT_TRUE(writer.InvalidatePeer("target").ok());
  const Status failed = writer.Post(*hw);
  ASSERT_EQ(failed.code(), ErrorCode::kPeerDisconnected) << failed.ToString();
  EXPECT_EQ(Series(registry, "shardwire_transport_failures_total",
                   {"writer", "target", "WRITE", std::string(ErrorCodeName(failed.code()))})
                .value(),
            1u);
  EXPECT_EQ(write_bytes.value(), 3 * per_post);
  EXPECT_EQ(Series(registry, "shardwire_transport_transfers_total", {"writer", "target", "WRITE"}).value(), 3u);
  EXPECT_TRUE(writer.Release(*hw).ok());
  EXPECT_TRUE(writer.Release(*hr).ok());
}

}  // namespace
}  // namespace shardwire
