// The backend seam proved by faults: the in-process backend
// (src/transport/inproc/) injects drop, corrupt, delay and kill on command, and
// the agent above it must turn each into its typed error within a bound, never a
// hang (every wait here has a timeout; none asserts a duration). Also: a blob of
// another backend is refused with an error naming both.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "shardwire/agent.h"
#include "transport/inproc/inproc_factory.h"
#include "transport/transport_test_util.h"

namespace shardwire {
namespace {

using testing::Bytes;
using testing::Str;

using testing::FillPattern;
using testing::FirstMismatch;
using transport::inproc::FaultPlan;
using transport::inproc::InjectFaults;
using transport::inproc::Kill;

constexpr double kBoundS = 10;  // upper bound of every wait that must succeed or fail with a typed error
constexpr std::size_t kBytes = 256 * 1024;

// Two in-process agents ("<tag>-init", "<tag>-target"), each with a kBytes arena,
// connected both ways, and a prepared WRITE of the whole arena carrying "v".
struct Pair {
  std::unique_ptr<Agent> init, target;
  RegionId ri = 0, rt = 0;
  TransferHandle h;
  std::string init_name, target_name;
};

Pair MakePair(const std::string& tag, const std::string& backend = "inproc") {
  Pair p;
  p.init_name = tag + "-init";
  p.target_name = tag + "-target";
  auto a = Agent::Create({.name = p.init_name, .backend = backend});
  auto b = Agent::Create({.name = p.target_name, .backend = backend});
  EXPECT_TRUE(a.ok() && b.ok());
  if (!a.ok() || !b.ok()) return p;
  p.init = std::move(*a);
  p.target = std::move(*b);
  auto ri = p.init->AllocateArena(kBytes);
  auto rt = p.target->AllocateArena(kBytes);
  EXPECT_TRUE(ri.ok() && rt.ok());
  p.ri = *ri;
  p.rt = *rt;
  auto mi = p.init->ExportMetadata();
  auto mt = p.target->ExportMetadata();
  EXPECT_TRUE(mi.ok() && mt.ok());
  EXPECT_TRUE(p.target->ImportMetadata(*mi).ok());
  EXPECT_TRUE(p.init->ImportMetadata(*mt).ok());
  auto h = p.init->PrepareTransfer(TransferOp::kWrite, p.target_name, {{p.ri, 0, p.rt, 0, kBytes}}, Bytes("v"));
  EXPECT_TRUE(h.ok()) << h.status().ToString();
  if (h.ok()) p.h = *h;
  return p;
}

// A post that must land: Wait succeeds, the target holds the pattern, its notification arrives.
void ExpectCleanPost(Pair& p, std::uint64_t seed) {
  FillPattern(p.init->RegionBytes(p.ri), seed);
  ASSERT_TRUE(p.init->Post(p.h).ok());
  Status w = p.init->Wait(p.h, kBoundS);
  ASSERT_TRUE(w.ok()) << w.ToString();
  EXPECT_FALSE(FirstMismatch(p.target->RegionBytes(p.rt), seed).has_value());
  auto n = p.target->WaitNotification(kBoundS);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(n->peer, p.init_name);
  EXPECT_EQ(Str(n->payload), "v");
}

TEST(BackendFaults, CorruptOpFailsTheTransferWithCorruptDataThenRecovers) {
  Pair p = MakePair("corrupt-op");
  ASSERT_TRUE(p.init && p.target);
  ASSERT_TRUE(InjectFaults(p.init_name, FaultPlan{.corrupt_ops = 1}).ok());
  FillPattern(p.init->RegionBytes(p.ri), 1);
  ASSERT_TRUE(p.init->Post(p.h).ok());
  Status w = p.init->Wait(p.h, kBoundS);
  EXPECT_EQ(w.code(), ErrorCode::kCorruptData) << w.ToString();
  EXPECT_NE(w.message().find("corrupted in flight"), std::string::npos) << w.ToString();
  EXPECT_NE(w.message().find(p.target_name), std::string::npos) << w.ToString();
  // A failed post sends no notification.
  EXPECT_EQ(p.target->WaitNotification(0.3).status().code(), ErrorCode::kTimedOut);
  // The fault is consumed: the next post of the same handle is clean.
  ExpectCleanPost(p, 2);
}

TEST(BackendFaults, DroppedNotificationTimesOutAndTheNextArrives) {
  Pair p = MakePair("drop");
  ASSERT_TRUE(p.init && p.target);
  ASSERT_TRUE(InjectFaults(p.init_name, FaultPlan{.drop_messages = 1}).ok());
  FillPattern(p.init->RegionBytes(p.ri), 3);
  ASSERT_TRUE(p.init->Post(p.h).ok());
  ASSERT_TRUE(p.init->Wait(p.h, kBoundS).ok());  // the data landed; only the message was lost
  EXPECT_FALSE(FirstMismatch(p.target->RegionBytes(p.rt), 3).has_value());
  EXPECT_EQ(p.target->WaitNotification(0.3).status().code(), ErrorCode::kTimedOut);
  ExpectCleanPost(p, 4);
}

TEST(BackendFaults, CorruptNotificationIsDroppedByTheDecoderAndTimesOut) {
  Pair p = MakePair("corrupt-msg");
  ASSERT_TRUE(p.init && p.target);
  ASSERT_TRUE(InjectFaults(p.init_name, FaultPlan{.corrupt_messages = 1}).ok());
  ASSERT_TRUE(p.init->SendMessage(p.target_name, Bytes("lost")).ok());
  EXPECT_EQ(p.target->WaitNotification(0.3).status().code(), ErrorCode::kTimedOut);
  ASSERT_TRUE(p.init->SendMessage(p.target_name, Bytes("kept")).ok());
  auto n = p.target->WaitNotification(kBoundS);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(Str(n->payload), "kept");
}

TEST(BackendFaults, DelayedCompletionIsInFlightThenLands) {
  Pair p = MakePair("delay");
  ASSERT_TRUE(p.init && p.target);
  // Long enough that the two checks below run while it is in flight, however slowly this runs.
  ASSERT_TRUE(InjectFaults(p.init_name, FaultPlan{.delay = std::chrono::milliseconds(5000)}).ok());
  FillPattern(p.init->RegionBytes(p.ri), 5);
  ASSERT_TRUE(p.init->Post(p.h).ok());
  EXPECT_EQ(p.init->Wait(p.h, 0.05).code(), ErrorCode::kTimedOut);
  EXPECT_EQ(p.init->Post(p.h).code(), ErrorCode::kInvalidArgument);  // still in flight
  Status w = p.init->Wait(p.h, kBoundS);
  ASSERT_TRUE(w.ok()) << w.ToString();
  EXPECT_FALSE(FirstMismatch(p.target->RegionBytes(p.rt), 5).has_value());
  auto n = p.target->WaitNotification(kBoundS);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
}

// The largest growth of one lane's stall since `before` (Agent::LaneStallSeconds, by lane).
double LaneStallGrowth(const Agent& agent, const std::vector<double>& before) {
  const std::vector<double> now = agent.LaneStallSeconds();
  EXPECT_EQ(now.size(), before.size());
  double most = 0;
  for (std::size_t i = 0; i < now.size() && i < before.size(); ++i) {
    EXPECT_GE(now[i], before[i]) << "lane " << i << "'s stall decreased";
    most = std::max(most, now[i] - before[i]);
  }
  return most;
}

// A lane held up 4 s (as one starved of CPU, or waiting for its lock, would be) is seen by
// Agent::LaneStallSeconds while it lasts, before the op it holds completes, and counted whole
// (the gap less kLaneStallThresholdS) after; the op then lands intact.
TEST(BackendFaults, AHeldUpLaneCountsAsLaneStallWhileAndAfterItLasts) {
  Pair p = MakePair("hold");
  ASSERT_TRUE(p.init && p.target);
  const std::vector<double> before = p.init->LaneStallSeconds();
  ASSERT_EQ(before.size(), p.init->options().lanes);
  ASSERT_TRUE(InjectFaults(p.init_name, FaultPlan{.hold_lane = std::chrono::milliseconds(4000)}).ok());
  FillPattern(p.init->RegionBytes(p.ri), 6);
  ASSERT_TRUE(p.init->Post(p.h).ok());
  // The stall is read first, then whether the op completed: not yet complete means it was
  // still held when the stall was read.
  double during = 0;
  bool done = false;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::duration<double>(kBoundS);
  while (std::chrono::steady_clock::now() < give_up) {
    during = LaneStallGrowth(*p.init, before);
    auto t = p.init->Test(p.h);
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    done = *t;
    if (done || during >= 1.0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_FALSE(done) << "the held op completed before the lane's stall showed (" << during << " s)";
  EXPECT_GE(during, 1.0);
  Status w = p.init->Wait(p.h, kBoundS);
  ASSERT_TRUE(w.ok()) << w.ToString();
  EXPECT_FALSE(FirstMismatch(p.target->RegionBytes(p.rt), 6).has_value());
  EXPECT_GE(LaneStallGrowth(*p.init, before), 4.0 - kLaneStallThresholdS);
  ExpectCleanPost(p, 7);  // the hold is consumed
}

TEST(BackendFaults, KilledTargetFailsTheTransferInFlightWithPeerDisconnected) {
  Pair p = MakePair("kill-target");
  ASSERT_TRUE(p.init && p.target);
  // A long delay keeps the post in flight until the kill (no timing race: 60 s >> the bound).
  ASSERT_TRUE(InjectFaults(p.init_name, FaultPlan{.delay = std::chrono::seconds(60)}).ok());
  ASSERT_TRUE(p.init->Post(p.h).ok());
  ASSERT_TRUE(Kill(p.target_name, "killed by the test").ok());
  Status w = p.init->Wait(p.h, kBoundS);
  EXPECT_EQ(w.code(), ErrorCode::kPeerDisconnected) << w.ToString();
  EXPECT_NE(w.message().find("killed by the test"), std::string::npos) << w.ToString();
  auto reported = p.init->WaitNotification(kBoundS);
  EXPECT_EQ(reported.status().code(), ErrorCode::kPeerDisconnected) << reported.status().ToString();
  EXPECT_EQ(p.init->FailedPeers(), std::vector<std::string>{p.target_name});
  EXPECT_EQ(p.init->Post(p.h).code(), ErrorCode::kPeerDisconnected);
  EXPECT_TRUE(p.init->Release(p.h).ok());
}

TEST(BackendFaults, KilledInitiatorWakesTheTargetsWaitNotification) {
  Pair p = MakePair("kill-init");
  ASSERT_TRUE(p.init && p.target);
  ASSERT_TRUE(Kill(p.init_name, "initiator crashed").ok());
  auto n = p.target->WaitNotification(kBoundS);
  EXPECT_EQ(n.status().code(), ErrorCode::kPeerDisconnected) << n.status().ToString();
  EXPECT_NE(n.status().message().find("initiator crashed"), std::string::npos) << n.status().ToString();
}

TEST(BackendFaults, DestroyedTargetIsPeerDisconnectedNotAWriteIntoFreedMemory) {
  Pair p = MakePair("destroyed");
  ASSERT_TRUE(p.init && p.target);
  p.target.reset();
  // The initiator may learn of the death before the post (the post is refused) or after it
  // (the transfer in flight fails): either way kPeerDisconnected, never a write into freed
  // memory. (Seen under TSan: a lane reaped the dead peer before Post ran.)
  Status posted = p.init->Post(p.h);
  Status w = posted.ok() ? p.init->Wait(p.h, kBoundS) : posted;
  EXPECT_EQ(w.code(), ErrorCode::kPeerDisconnected) << w.ToString();
}

TEST(BackendFaults, BlobOfAnotherBackendIsUnsupportedNamingBoth) {
  auto u = Agent::Create({.name = "mixed-ucx", .backend = "ucx"});
  auto i = Agent::Create({.name = "mixed-inproc", .backend = "inproc"});
  ASSERT_TRUE(u.ok() && i.ok());
  auto bu = (*u)->ExportMetadata();
  auto bi = (*i)->ExportMetadata();
  ASSERT_TRUE(bu.ok() && bi.ok());
  auto r1 = (*u)->ImportMetadata(*bi);
  EXPECT_EQ(r1.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(r1.status().message().find("[inproc]"), std::string::npos) << r1.status().ToString();
  EXPECT_NE(r1.status().message().find("uses backend ucx"), std::string::npos) << r1.status().ToString();
  auto r2 = (*i)->ImportMetadata(*bu);
  EXPECT_EQ(r2.status().code(), ErrorCode::kUnsupported);
  EXPECT_NE(r2.status().message().find("[ucx]"), std::string::npos) << r2.status().ToString();
  EXPECT_NE(r2.status().message().find("uses backend inproc"), std::string::npos) << r2.status().ToString();
  EXPECT_EQ(Agent::Create({.name = "x", .backend = "tcp"}).status().code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace shardwire
