// The agent's transfer features of issue 4, in one process: flow control with tens of
// thousands of descriptors, lanes, the active-message write path, per-post
// notification payloads, coalesced registration, arena sub-allocation and the
// capability probe. No timing assertions.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "shardwire/agent.h"
#include "shardwire/arena_allocator.h"
#include "shardwire/transport_capabilities.h"
#include "sanitizer_build.h"
#include "transport/metadata_blob.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing::Bytes;
using testing::Str;

using testing::FillPattern;
using testing::FirstMismatch;
using testing::PatternByte;

constexpr std::byte kUntouched{0xEE};
constexpr double kTimeoutS = 60;

struct Pair {
  std::unique_ptr<Agent> a, b;
  std::vector<std::byte> owned_a, owned_b;
  RegionId ra = 0, rb = 0;
};

// Two agents with one region each (arena or caller-registered), connected.
Pair MakePair(AgentOptions oa, AgentOptions ob, std::size_t size, bool arena) {
  Pair p;
  oa.name = "initiator";
  ob.name = "target";
  auto a = Agent::Create(oa);
  auto b = Agent::Create(ob);
  EXPECT_TRUE(a.ok() && b.ok());
  if (!a.ok() || !b.ok()) return p;
  p.a = std::move(a).value();
  p.b = std::move(b).value();
  auto region = [&](Agent& g, std::vector<std::byte>& owned) {
    if (arena) return g.AllocateArena(size);
    owned.resize(size);
    return g.RegisterMemory(owned.data(), size);
  };
  auto ra = region(*p.a, p.owned_a);
  auto rb = region(*p.b, p.owned_b);
  EXPECT_TRUE(ra.ok() && rb.ok());
  if (!ra.ok() || !rb.ok()) return p;
  p.ra = *ra;
  p.rb = *rb;
  auto ma = p.a->ExportMetadata();
  auto mb = p.b->ExportMetadata();
  EXPECT_TRUE(ma.ok() && mb.ok());
  EXPECT_TRUE(p.b->ImportMetadata(*ma).ok());
  EXPECT_TRUE(p.a->ImportMetadata(*mb).ok());
  return p;
}

std::size_t RssKiB() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6));
  return 0;
}

struct FlowParams {
  bool arena;
  PeerFailureDetection detection;
  std::string backend = "ucx";  // AgentOptions::backend
};

class FlowControl : public ::testing::TestWithParam<FlowParams> {};

// 50,000 descriptors in one prepared transfer, with a window of 16 operations
// and 256 KiB per peer: it completes byte-exact, posts again, and resident
// memory does not grow with the number of posts. Under ThreadSanitizer, UCX's TCP
// transport takes about 28 s per post of 50,000 (every op runs through the
// instrumented lane loop), close to the 60 s wait: there the TCP variant moves
// 10,000, still 625 windows of 16 per post.
TEST_P(FlowControl, FiftyThousandDescriptorsWithSmallWindow) {
  const FlowParams fp = GetParam();
  const bool tcp_under_tsan =
      testing_support::kThreadSanitizer && fp.detection == PeerFailureDetection::kUcxPeer;
  const std::size_t descs = tcp_under_tsan ? 10000 : 50000;
  constexpr std::size_t kLen = 48, kStride = 64;
  const std::size_t size = descs * kStride;
  AgentOptions o;
  o.ucx.failure_detection = fp.detection;
  o.backend = fp.backend;
  o.max_ops_in_flight_per_peer = 16;
  o.max_bytes_in_flight_per_peer = 256 * 1024;
  Pair p = MakePair(o, o, size, fp.arena);
  ASSERT_TRUE(p.a && p.b);
  std::vector<TransferDescriptor> d;
  d.reserve(descs);
  // Reverse order on the target so offsets differ on both sides.
  for (std::size_t i = 0; i < descs; ++i) d.push_back({p.ra, i * kStride, p.rb, (descs - 1 - i) * kStride, kLen});
  auto h = p.a->PrepareTransfer(TransferOp::kWrite, "target", d, Bytes("flow"));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  std::size_t rss_after_first = 0;
  for (int step = 1; step <= 4; ++step) {
    FillPattern(p.a->RegionBytes(p.ra), 500 + static_cast<std::uint64_t>(step));
    std::fill(p.b->RegionBytes(p.rb).begin(), p.b->RegionBytes(p.rb).end(), kUntouched);
    ASSERT_TRUE(p.a->Post(*h).ok());
    Status s = p.a->Wait(*h, kTimeoutS);
    ASSERT_TRUE(s.ok()) << "step " << step << ": " << s.ToString();
    auto n = p.b->WaitNotification(kTimeoutS);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    EXPECT_EQ(Str(n->payload), "flow");
    auto target = p.b->RegionBytes(p.rb);
    for (std::size_t i = 0; i < descs; ++i) {  // every descriptor's bytes, and every gap left untouched
      auto mm = FirstMismatch(target.subspan((descs - 1 - i) * kStride, kLen), 500 + static_cast<std::uint64_t>(step),
                              i * kStride);
      ASSERT_FALSE(mm.has_value()) << "step " << step << " descriptor " << i << " byte " << *mm;
      for (std::size_t g = kLen; g < kStride; ++g) {
        ASSERT_EQ(target[(descs - 1 - i) * kStride + g], kUntouched) << "step " << step << " descriptor " << i;
      }
    }
    if (step == 1) rss_after_first = RssKiB();
  }
  const std::size_t rss_end = RssKiB();
  std::printf("[ info     ] RSS after post 1: %zu KiB, after post 4: %zu KiB\n", rss_after_first, rss_end);
  EXPECT_LT(rss_end, rss_after_first + 32 * 1024) << "memory grew by more than 32 MiB over 3 posts";
  auto info = p.a->DescribePeer("target");
  ASSERT_TRUE(info.ok());
  std::printf("[ info     ] write path %s\n", std::string(WritePathName(info->write_path)).c_str());
  EXPECT_TRUE(p.a->Release(*h).ok());
}

INSTANTIATE_TEST_SUITE_P(AgentTransfer, FlowControl,
                         ::testing::Values(FlowParams{true, PeerFailureDetection::kAuto},
                                           FlowParams{false, PeerFailureDetection::kAuto},
                                           FlowParams{false, PeerFailureDetection::kUcxPeer},
                                           FlowParams{false, PeerFailureDetection::kAuto, "inproc"}),
                         [](const auto& i) {
                           return std::string(i.param.arena ? "arena" : "registered") +
                                  (i.param.detection == PeerFailureDetection::kAuto ? "_auto" : "_ucxpeer_tcp") +
                                  (i.param.backend == "ucx" ? "" : "_" + i.param.backend);
                         });

struct LaneParams {
  std::uint32_t lanes_a;
  std::uint32_t lanes_b;
  WritePath path;
  TransferOp op;
  std::string backend = "ucx";  // AgentOptions::backend
};

class Lanes : public ::testing::TestWithParam<LaneParams> {};

// Uneven descriptors cut into small slices over several lanes (also with
// different lane counts on the two sides), WRITE by put or by active
// messages, and READ: byte-exact, nothing outside the descriptors touched, and
// the notification only after the data.
TEST_P(Lanes, SlicedAcrossLanesIsByteExact) {
  const LaneParams lp = GetParam();
  constexpr std::size_t kSize = 8u << 20;
  AgentOptions oa, ob;
  oa.lanes = lp.lanes_a;
  ob.lanes = lp.lanes_b;
  oa.slice_bytes = 64 * 1024;
  oa.write_path = lp.path;
  oa.backend = ob.backend = lp.backend;
  for (bool arena : {true, false}) {
    Pair p = MakePair(oa, ob, kSize, arena);
    ASSERT_TRUE(p.a && p.b);
    Agent& src = lp.op == TransferOp::kWrite ? *p.a : *p.b;
    Agent& dst = lp.op == TransferOp::kWrite ? *p.b : *p.a;
    const RegionId src_r = lp.op == TransferOp::kWrite ? p.ra : p.rb;
    const RegionId dst_r = lp.op == TransferOp::kWrite ? p.rb : p.ra;
    FillPattern(src.RegionBytes(src_r), 31);
    std::fill(dst.RegionBytes(dst_r).begin(), dst.RegionBytes(dst_r).end(), kUntouched);
    const std::vector<TransferDescriptor> d = {{p.ra, 1, p.rb, 3, 3u << 20},
                                               {p.ra, (3u << 20) + 7, p.rb, (4u << 20) + 1, 1000001},
                                               {p.ra, 6u << 20, p.rb, 6u << 20, 5}};
    auto h = p.a->PrepareTransfer(lp.op, "target", d, Bytes("lanes"));
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    ASSERT_TRUE(p.a->Post(*h).ok());
    auto n = p.b->WaitNotification(kTimeoutS);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    if (lp.op == TransferOp::kWrite) {
      // The notification is only sent after every lane is remotely complete.
      for (const auto& x : d) EXPECT_FALSE(FirstMismatch(dst.RegionBytes(dst_r).subspan(x.remote_offset, x.length), 31, x.local_offset).has_value());
    }
    ASSERT_TRUE(p.a->Wait(*h, kTimeoutS).ok());
    auto bytes = dst.RegionBytes(dst_r);
    std::vector<bool> covered(kSize, false);
    for (const auto& x : d) {
      const std::uint64_t at = lp.op == TransferOp::kWrite ? x.remote_offset : x.local_offset;
      const std::uint64_t from = lp.op == TransferOp::kWrite ? x.local_offset : x.remote_offset;
      EXPECT_FALSE(FirstMismatch(bytes.subspan(at, x.length), 31, from).has_value());
      for (std::uint64_t k = 0; k < x.length; ++k) covered[at + k] = true;
    }
    for (std::size_t k = 0; k < kSize; k += 4093)
      if (!covered[k]) {
        ASSERT_EQ(bytes[k], kUntouched) << "byte " << k << " outside every descriptor was modified";
      }
    auto info = p.a->DescribePeer("target");
    ASSERT_TRUE(info.ok());
    EXPECT_EQ(info->remote_lanes, lp.lanes_b);
    if (lp.path != WritePath::kAuto) {
      EXPECT_EQ(info->write_path, lp.path);
    }
    EXPECT_TRUE(p.a->Release(*h).ok());
  }
}

INSTANTIATE_TEST_SUITE_P(AgentTransfer, Lanes,
                         ::testing::Values(LaneParams{1, 1, WritePath::kAuto, TransferOp::kWrite},
                                           LaneParams{2, 2, WritePath::kAuto, TransferOp::kWrite},
                                           LaneParams{4, 1, WritePath::kAuto, TransferOp::kWrite},
                                           LaneParams{3, 2, WritePath::kActiveMessage, TransferOp::kWrite},
                                           LaneParams{2, 3, WritePath::kPut, TransferOp::kWrite},
                                           LaneParams{2, 2, WritePath::kAuto, TransferOp::kRead},
                                           LaneParams{4, 2, WritePath::kAuto, TransferOp::kRead},
                                           LaneParams{1, 1, WritePath::kAuto, TransferOp::kWrite, "inproc"},
                                           LaneParams{2, 3, WritePath::kAuto, TransferOp::kWrite, "inproc"},
                                           LaneParams{4, 2, WritePath::kAuto, TransferOp::kRead, "inproc"}),
                         [](const auto& i) {
                           return std::to_string(i.param.lanes_a) + "x" + std::to_string(i.param.lanes_b) + "_" +
                                  std::string(i.param.op == TransferOp::kWrite ? "write_" : "read_") +
                                  (i.param.path == WritePath::kActiveMessage ? "am"
                                   : i.param.path == WritePath::kPut       ? "put"
                                                                           : "auto") +
                                  (i.param.backend == "ucx" ? "" : "_" + i.param.backend);
                         });

// A post small enough that Post issues its first lane's share itself (64 x 64 KiB = 4 MiB over
// 2 lanes, 2 MiB each, at the default 1 MiB slices) while lane 1's thread issues the rest:
// posted again and again with new contents, WRITE and READ, arena and caller-registered memory,
// every byte lands, the notification comes after the data, and nothing outside the descriptors
// is touched. With the lanes' idle spin (AgentOptions::idle_spin_s) and without; every other post
// follows a pause longer than the spin, so lane threads are found both awake and asleep (the
// Wake / sleeping handshake of Lane::Wake), and Post may take over lane 1's job.
TEST(AgentTransfer, SmallPostsSplitOverLanesAreByteExactPostAfterPost) {
  constexpr std::size_t kRow = 64 * 1024, kRows = 64, kSize = 2 * kRows * kRow;
  for (double spin_s : {AgentOptions{}.idle_spin_s, 0.0})
  for (bool arena : {true, false}) {
    for (TransferOp op : {TransferOp::kWrite, TransferOp::kRead}) {
      AgentOptions o;
      o.lanes = 2;
      o.idle_spin_s = spin_s;
      SCOPED_TRACE(std::string(arena ? "arena " : "registered ") + (op == TransferOp::kWrite ? "WRITE" : "READ") +
                   ", idle spin " + std::to_string(spin_s) + " s");
      Pair p = MakePair(o, o, kSize, arena);
      ASSERT_TRUE(p.a && p.b);
      Agent& src = op == TransferOp::kWrite ? *p.a : *p.b;
      Agent& dst = op == TransferOp::kWrite ? *p.b : *p.a;
      const RegionId src_r = op == TransferOp::kWrite ? p.ra : p.rb;
      const RegionId dst_r = op == TransferOp::kWrite ? p.rb : p.ra;
      // Every other row on the initiator, rows in reverse order on the target.
      std::vector<TransferDescriptor> d;
      for (std::size_t i = 0; i < kRows; ++i) d.push_back({p.ra, 2 * i * kRow, p.rb, (kRows - 1 - i) * kRow, kRow});
      auto h = p.a->PrepareTransfer(op, "target", d, Bytes("small"));
      ASSERT_TRUE(h.ok()) << h.status().ToString();
      for (std::uint64_t post = 1; post <= 6; ++post) {
        if (post % 2 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // lanes fall asleep
        FillPattern(src.RegionBytes(src_r), 700 + post);
        std::fill(dst.RegionBytes(dst_r).begin(), dst.RegionBytes(dst_r).end(), kUntouched);
        ASSERT_TRUE(p.a->Post(*h).ok());
        auto n = p.b->WaitNotification(kTimeoutS);
        ASSERT_TRUE(n.ok()) << n.status().ToString();
        // A WRITE's notification is sent only after every lane is remotely complete: the bytes
        // are checked before Wait.
        if (op == TransferOp::kRead) {
          ASSERT_TRUE(p.a->Wait(*h, kTimeoutS).ok());
        }
        const auto bytes = dst.RegionBytes(dst_r);
        std::vector<bool> covered(kSize, false);
        for (const auto& x : d) {
          const std::uint64_t at = op == TransferOp::kWrite ? x.remote_offset : x.local_offset;
          const std::uint64_t from = op == TransferOp::kWrite ? x.local_offset : x.remote_offset;
          ASSERT_FALSE(FirstMismatch(bytes.subspan(at, x.length), 700 + post, from).has_value())
              << "post " << post << ", descriptor at " << at;
          for (std::uint64_t k = 0; k < x.length; ++k) covered[at + k] = true;
        }
        for (std::size_t k = 0; k < kSize; k += 4093) {
          if (!covered[k]) {
            ASSERT_EQ(bytes[k], kUntouched) << "byte " << k << " outside every descriptor was modified";
          }
        }
        if (op == TransferOp::kWrite) {
          ASSERT_TRUE(p.a->Wait(*h, kTimeoutS).ok());
        }
      }
      EXPECT_TRUE(p.a->Release(*h).ok());
    }
  }
}

TEST(AgentTransfer, PostCarriesItsOwnNotificationPayload) {
  Pair p = MakePair({}, {}, 1 << 20, true);
  ASSERT_TRUE(p.a && p.b);
  auto h = p.a->PrepareTransfer(TransferOp::kWrite, "target", {{p.ra, 0, p.rb, 0, 1 << 20}}, Bytes("prepared"));
  ASSERT_TRUE(h.ok());
  for (std::string payload : {"weights v1", "weights v2", ""}) {
    ASSERT_TRUE(p.a->Post(*h, Bytes(payload)).ok());
    ASSERT_TRUE(p.a->Wait(*h, kTimeoutS).ok());
    auto n = p.b->WaitNotification(kTimeoutS);
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(Str(n->payload), payload);
  }
  ASSERT_TRUE(p.a->Post(*h).ok());  // back to the prepared payload
  ASSERT_TRUE(p.a->Wait(*h, kTimeoutS).ok());
  auto n = p.b->WaitNotification(kTimeoutS);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(Str(n->payload), "prepared");
  // A transfer prepared without a payload can still carry one per post.
  auto h2 = p.a->PrepareTransfer(TransferOp::kWrite, "target", {{p.ra, 0, p.rb, 0, 4096}}, std::nullopt);
  ASSERT_TRUE(h2.ok());
  ASSERT_TRUE(p.a->Post(*h2, Bytes("v3")).ok());
  ASSERT_TRUE(p.a->Wait(*h2, kTimeoutS).ok());
  n = p.b->WaitNotification(kTimeoutS);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(Str(n->payload), "v3");
  ASSERT_TRUE(p.a->Post(*h2).ok());
  ASSERT_TRUE(p.a->Wait(*h2, kTimeoutS).ok());
  EXPECT_EQ(p.b->WaitNotification(0.2).status().code(), ErrorCode::kTimedOut);  // none attached
  // Cancel of a completed post leaves it completed.
  EXPECT_TRUE(p.a->Cancel(*h2, 1).ok());
  EXPECT_TRUE(p.a->Wait(*h2, 1).ok());
}

TEST(AgentTransfer, CreateRejectsBadOptions) {
  EXPECT_EQ(Agent::Create({.name = "x", .lanes = kMaxLanes + 1}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(Agent::Create({.name = "x", .slice_bytes = 100}).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(Agent::Create({.name = "x", .max_ops_in_flight_per_peer = 0}).status().code(), ErrorCode::kInvalidArgument);
  for (double spin_s : {-1e-6, 0.02, std::nan("")}) {
    AgentOptions o{.name = "x"};
    o.idle_spin_s = spin_s;
    EXPECT_EQ(Agent::Create(o).status().code(), ErrorCode::kInvalidArgument) << spin_s;
  }
  auto a = Agent::Create({.name = "x"});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->options().lanes, kDefaultLanes);
}

TEST(AgentTransfer, RegisterRangesCoalescesAdjacentTensors) {
  auto a = Agent::Create({.name = "a"});
  ASSERT_TRUE(a.ok());
  Agent& g = **a;
  std::vector<std::byte> big(1 << 20), other(4096);
  // Five tensors: four tile `big` (given out of order, two overlapping), one elsewhere.
  std::vector<Agent::MemoryRange> ranges = {{big.data() + 4096, 8192},
                                            {big.data(), 4096},
                                            {other.data(), 4096},
                                            {big.data() + 12288, big.size() - 12288},
                                            {big.data() + 8192, 100}};
  auto loc = g.RegisterRanges(ranges);
  ASSERT_TRUE(loc.ok()) << loc.status().ToString();
  ASSERT_EQ(loc->size(), 5u);
  const RegionId r_big = (*loc)[1].region;
  EXPECT_EQ((*loc)[0].region, r_big);
  EXPECT_EQ((*loc)[3].region, r_big);
  EXPECT_EQ((*loc)[4].region, r_big);
  EXPECT_NE((*loc)[2].region, r_big);
  EXPECT_EQ((*loc)[1].offset, 0u);
  EXPECT_EQ((*loc)[0].offset, 4096u);
  EXPECT_EQ((*loc)[3].offset, 12288u);
  EXPECT_EQ((*loc)[4].offset, 8192u);
  EXPECT_EQ(g.RegionBytes(r_big).size(), big.size());
  EXPECT_EQ(g.RegionBytes(r_big).data(), big.data());
  auto blob = g.ExportMetadata();
  ASSERT_TRUE(blob.ok());
  auto m = transport::DecodeAgentMetadata(*blob);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->regions.size(), 2u);  // five tensors, two registrations
  EXPECT_EQ(g.RegisterRanges({}).status().code(), ErrorCode::kInvalidArgument);
  std::vector<Agent::MemoryRange> bad = {{big.data(), 16}, {nullptr, 16}};
  EXPECT_EQ(g.RegisterRanges(bad).status().code(), ErrorCode::kInvalidArgument);
}

TEST(ArenaAllocatorTest, FirstFitAlignmentFreeAndCoalescing) {
  ArenaAllocator al(1 << 20);
  auto a = al.Allocate(100, 64);
  auto b = al.Allocate(1000, 4096);
  auto c = al.Allocate(10);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, 0u);
  EXPECT_EQ(*b, 4096u);
  EXPECT_EQ(*c % 64, 0u);
  EXPECT_GE(*c, *b + 1000);  // padding before b belongs to b: no fragment before it
  EXPECT_EQ(al.bytes_in_use(), 1110u);
  EXPECT_EQ(al.allocations(), 3u);
  EXPECT_EQ(al.Allocate(2 << 20).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(al.Allocate(0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(al.Allocate(8, 3).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(al.Free(*b).ok());
  EXPECT_EQ(al.Free(*b).code(), ErrorCode::kNotFound);
  EXPECT_TRUE(al.Free(*a).ok());
  EXPECT_TRUE(al.Free(*c).ok());
  EXPECT_EQ(al.bytes_in_use(), 0u);
  auto whole = al.Allocate(1 << 20, 1);  // everything merged back into one range
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  EXPECT_EQ(*whole, 0u);
}

TEST(ArenaAllocatorTest, ManyTensorsInOneArenaAreDisjoint) {
  ArenaAllocator al(64 << 20);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> got;
  for (int i = 0; i < 18867; ++i) {
    const std::uint64_t n = 1 + static_cast<std::uint64_t>(i % 7) * 513;
    auto off = al.Allocate(n, 256);
    ASSERT_TRUE(off.ok()) << i << ": " << off.status().ToString();
    got.emplace_back(*off, n);
  }
  std::sort(got.begin(), got.end());
  for (std::size_t i = 1; i < got.size(); ++i) ASSERT_LE(got[i - 1].first + got[i - 1].second, got[i].first);
}

TEST(AgentTransfer, CapabilityProbeReportsHostAndExplainsMissingKinds) {
  auto caps = ProbeTransportCapabilities();
  ASSERT_TRUE(caps.ok()) << caps.status().ToString();
  EXPECT_FALSE(caps->ucx_version.empty());
  EXPECT_FALSE(caps->transports.empty());
  bool host = false, cuda_seen = false;
  for (const auto& m : caps->memory_kinds) {
    EXPECT_FALSE(m.detail.empty()) << m.kind;
    if (m.kind == "host") host = m.available;
    if (m.kind == "cuda") cuda_seen = true;
    std::printf("[ info     ] memory kind %-12s %s (%s)\n", m.kind.c_str(), m.available ? "available" : "not available",
                m.detail.c_str());
  }
  EXPECT_TRUE(host);
  EXPECT_TRUE(cuda_seen);
  for (const auto& t : caps->transports) std::printf("[ info     ] transport %s\n", t.c_str());
}

// The version check reads ucp_get_version; the oracle here parses the version
// string instead. Debian 12's UCX 1.13.1 has the wire-up abort of openucx/ucx#8175.
TEST(AgentTransfer, CapabilityProbeNamesTheKnownDefectsOfThisUcxVersion) {
  auto caps = ProbeTransportCapabilities();
  ASSERT_TRUE(caps.ok()) << caps.status().ToString();
  unsigned major = 0, minor = 0;
  ASSERT_EQ(std::sscanf(caps->ucx_version.c_str(), "%u.%u", &major, &minor), 2) << caps->ucx_version;
  const bool before_fix = major == 1 && minor < 14;
  ASSERT_EQ(caps->known_defects.size(), before_fix ? 1u : 0u) << caps->ucx_version;
  if (before_fix) {
    EXPECT_NE(caps->known_defects[0].find("openucx/ucx#8175"), std::string::npos) << caps->known_defects[0];
    EXPECT_NE(caps->known_defects[0].find(caps->ucx_version), std::string::npos) << caps->known_defects[0];
  }
}

}  // namespace
}  // namespace shardwire
