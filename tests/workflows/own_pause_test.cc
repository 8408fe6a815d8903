// Waits that do not count this process's own pauses (src/workflows/own_pause.h): the gap
// arithmetic on explicit time points, and Inbox waits whose caller did not run past the
// deadline while the awaited message arrived (it must be taken, not reported missing).
#include "workflows/own_pause.h"

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "agent_pair.h"
#include "shardwire/agent.h"
#include "transport/inproc/inproc_factory.h"
#include "workflows/sync_messages.h"

namespace shardwire::workflows {
namespace {

using std::chrono::milliseconds;

TEST(OwnPause, AGapLongerThanTheSliceAndHalfASecondIsAPause) {
  const PauseClock::time_point t0{};
  OwnPauseDetector d(0.25, t0);
  EXPECT_EQ(d.Check(t0 + milliseconds(200)), PauseClock::duration::zero());  // a normal turn
  EXPECT_EQ(d.Check(t0 + milliseconds(950)), PauseClock::duration::zero());  // 0.75 s: at the limit
  EXPECT_EQ(d.Check(t0 + milliseconds(4950)), milliseconds(4000));           // 4 s: a pause
  EXPECT_EQ(d.Check(t0 + milliseconds(5000)), PauseClock::duration::zero());
  EXPECT_DOUBLE_EQ(d.paused_s(), 4.0);
}

TEST(OwnPause, TheDeadlineMovesByEveryPauseAndOnlyByPauses) {
  const PauseClock::time_point t0{};
  OwnPauseDeadline d(1.0, 0.25, t0);
  EXPECT_NEAR(d.Left(t0 + milliseconds(200)), 0.8, 1e-9);
  EXPECT_NEAR(d.Left(t0 + milliseconds(3200)), 0.8, 1e-9);  // stopped 3 s: the 3 s do not count
  EXPECT_NEAR(d.paused_s(), 3.0, 1e-9);
  EXPECT_NEAR(d.Left(t0 + milliseconds(3400)), 0.6, 1e-9);
  EXPECT_NEAR(d.Left(t0 + milliseconds(3650)), 0.35, 1e-9);
  EXPECT_NEAR(d.Left(t0 + milliseconds(4000)), 0.0, 1e-9);  // ran out while running
  EXPECT_LT(d.Left(t0 + milliseconds(4100)), 0.0);
  // The first look after a pause that began at the start counts it too.
  OwnPauseDeadline late(1.0, 0.1, t0);
  EXPECT_NEAR(late.Left(t0 + milliseconds(5000)), 1.0, 1e-9);
}

// The lanes' stall is forgiven as it grows, look by look; a process stop that shows up in both
// (its lanes did not run either) is forgiven once, as the larger of the two.
TEST(OwnPause, TheLanesStallIsForgivenAndAStopIsNotForgivenTwice) {
  const PauseClock::time_point t0{};
  // Whatever the agent's two lanes counted before the wait began: lane 0 more than lane 1.
  std::vector<double> lanes = {7.0, 2.0};
  OwnPauseDeadline d(10.0, 0.25, t0, [&lanes] { return lanes; });
  EXPECT_NEAR(d.Left(t0 + milliseconds(200)), 9.8, 1e-9);
  lanes = {7.0, 3.5};  // lane 1 held up 1.5 s while this thread kept looking (still below lane 0)
  EXPECT_NEAR(d.Left(t0 + milliseconds(400)), 9.6 + 1.5, 1e-9);
  EXPECT_NEAR(d.lanes_s(), 1.5, 1e-9);
  lanes = {9.5, 6.0};  // a 3 s stop of the process: each lane stalled 2.5 s of it
  EXPECT_NEAR(d.Left(t0 + milliseconds(3400)), 9.6 + 1.5, 1e-9);
  EXPECT_NEAR(d.paused_s(), 4.5, 1e-9);
  EXPECT_NEAR(d.lanes_s(), 1.5, 1e-9);                       // the stop was the larger
  EXPECT_NEAR(d.Left(t0 + milliseconds(3600)), 10.9, 1e-9);  // both ran: the time counts
  EXPECT_NEAR(d.paused_s(), 4.5, 1e-9);
}

// A lane stuck for good moves a wait's deadline by at most its timeout: the wait still ends.
TEST(OwnPause, ALaneStuckForGoodMovesTheDeadlineByAtMostTheTimeout) {
  const PauseClock::time_point t0{};
  std::vector<double> lanes = {0.0};
  OwnPauseDeadline d(1.0, 0.25, t0, [&lanes] { return lanes; });
  double left = 1.0;
  for (int look = 1; look <= 100 && left > 0; ++look) {  // a look every 0.1 s; the lane's gap grows
    lanes = {0.1 * look};
    left = d.Left(t0 + milliseconds(100 * look));
  }
  EXPECT_LE(left, 0.0) << "the wait never ended";
  EXPECT_NEAR(d.lanes_s(), 1.0, 1e-9);
}

// Three WRITEs of one in-process agent, waited for together; the ops to peers 0 and 2 are held
// up for a minute (FaultPlan::delay_to: two stalled peers), peer 1 is healthy. The healthy one is
// reported complete first although it is not first in the list, with its bytes landed; the two
// stalled ones are reported timed out at one look, no slice between them: they shared one
// deadline (waiting for each in turn would have spent the whole timeout again on the second).
TEST(OwnPause, TransfersWaitedForTogetherShareOneDeadline) {
  constexpr std::size_t kBytes = 64 * 1024;
  const std::string init_name = "shared-deadline-init";
  auto init = Agent::Create({.name = init_name, .backend = "inproc"});
  ASSERT_TRUE(init.ok()) << init.status().ToString();
  auto source = (*init)->AllocateArena(kBytes);
  ASSERT_TRUE(source.ok());
  std::span<std::byte> source_bytes = (*init)->RegionBytes(*source);
  for (std::size_t i = 0; i < kBytes; ++i) source_bytes[i] = static_cast<std::byte>((i * 131 + 7) % 251);
  auto init_blob = (*init)->ExportMetadata();
  ASSERT_TRUE(init_blob.ok());
  std::vector<std::unique_ptr<Agent>> peers;
  std::vector<RegionId> regions;
  std::vector<TransferHandle> handles;
  for (int t = 0; t < 3; ++t) {
    const std::string name = fmt::format("shared-deadline-{}", t);
    auto peer = Agent::Create({.name = name, .backend = "inproc"});
    ASSERT_TRUE(peer.ok()) << peer.status().ToString();
    auto region = (*peer)->AllocateArena(kBytes);
    ASSERT_TRUE(region.ok());
    auto blob = (*peer)->ExportMetadata();
    ASSERT_TRUE(blob.ok());
    ASSERT_TRUE((*peer)->ImportMetadata(*init_blob).ok());
    ASSERT_TRUE((*init)->ImportMetadata(*blob).ok());
    auto h = (*init)->PrepareTransfer(TransferOp::kWrite, name, {{*source, 0, *region, 0, kBytes}}, std::nullopt);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    peers.push_back(std::move(*peer));
    regions.push_back(*region);
    handles.push_back(*h);
  }
  const auto stalled = std::chrono::seconds(60);
  ASSERT_TRUE(transport::inproc::InjectFaults(
                  init_name, {.delay_to = {{"shared-deadline-0", stalled}, {"shared-deadline-2", stalled}}})
                  .ok());
  for (TransferHandle h : handles) ASSERT_TRUE((*init)->Post(h).ok());
  std::vector<std::pair<int, ErrorCode>> events;  // (transfer, how it ended); (-1, kOk): a slice passed
  const Status st = WaitTransfersWithoutOwnPauses(
      **init, handles, 1.0, 0.1, [&](std::size_t i, const Status& end) { events.emplace_back(int(i), end.code()); },
      [&] {
        events.emplace_back(-1, ErrorCode::kOk);
        return Status::Ok();
      });
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::vector<std::pair<int, ErrorCode>> ends;
  for (const auto& e : events) {
    if (e.first >= 0) ends.push_back(e);
  }
  const std::vector<std::pair<int, ErrorCode>> expected = {
      {1, ErrorCode::kOk}, {0, ErrorCode::kTimedOut}, {2, ErrorCode::kTimedOut}};
  EXPECT_EQ(ends, expected) << "each transfer reported once: the healthy one first, then both stalled ones";
  ASSERT_GE(events.size(), 2u);
  EXPECT_EQ(events[events.size() - 2], std::make_pair(0, ErrorCode::kTimedOut))
      << "a slice passed between the two stalled transfers' timeouts: they did not share one deadline";
  const std::span<std::byte> landed = peers[1]->RegionBytes(regions[1]);
  EXPECT_TRUE(std::equal(landed.begin(), landed.end(), source_bytes.begin())) << "the healthy WRITE's bytes";
  for (int t : {0, 2}) {  // as the push does with a transfer that timed out
    if (!(*init)->Cancel(handles[static_cast<std::size_t>(t)], 0.1).ok())
      (void)(*init)->InvalidatePeer(fmt::format("shared-deadline-{}", t));
  }
}

// The waiting thread stands for a process that did not run: the interrupt hook (called after a
// slice without notifications) sleeps 3 s, three times the wait's timeout, and the awaited
// message is sent meanwhile. A deadline that counted those 3 s would report the sender missing
// (Collect: "no READY from a ready engine", the miss this change removes).
// An interrupt hook whose first call sends `message` from the sender and then sleeps 3 s.
std::function<Status()> SendThenDoNotRun(AgentPair& p, Message message) {
  auto calls = std::make_shared<int>(0);
  return [&p, message, calls]() -> Status {
    if ((*calls)++ == 0) {
      EXPECT_TRUE(p.sender->SendMessage(p.receiver_name, Encode(message)).ok());
      std::this_thread::sleep_for(std::chrono::seconds(3));
    }
    return Status::Ok();
  };
}

TEST(OwnPause, CollectTakesAMessageThatArrivedWhileTheWaiterDidNotRun) {
  AgentPair p = ConnectedPair("own-pause");
  ASSERT_TRUE(p.sender && p.receiver);
  Inbox inbox;
  const auto not_running = SendThenDoNotRun(p, {MessageKind::kReady, 7});
  auto got = inbox.Collect(*p.receiver, MessageKind::kReady, 7, {"own-pause-sender"}, 1.0, not_running);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->arrived.count("own-pause-sender"), 1u) << "the message that arrived during the pause was not taken";
  EXPECT_TRUE(got->failed.empty());
}

TEST(OwnPause, AwaitFromAllTakesAMessageThatArrivedWhileTheWaiterDidNotRun) {
  AgentPair p = ConnectedPair("own-pause");
  ASSERT_TRUE(p.sender && p.receiver);
  Inbox inbox;
  const auto not_running = SendThenDoNotRun(p, {MessageKind::kDone, 3});
  const Status st = inbox.AwaitFromAll(*p.receiver, MessageKind::kDone, 3, {"own-pause-sender"}, 1.0, nullptr,
                                       std::nullopt, not_running);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

// A peer that really is silent is still reported at the deadline (the pause moved it, no more).
TEST(OwnPause, ASilentPeerIsStillMissingAtTheDeadline) {
  AgentPair p = ConnectedPair("own-pause");
  ASSERT_TRUE(p.sender && p.receiver);
  Inbox inbox;
  int calls = 0;
  auto not_running = [&]() -> Status {
    if (calls++ == 0) std::this_thread::sleep_for(std::chrono::seconds(2));
    return Status::Ok();
  };
  auto got = inbox.Collect(*p.receiver, MessageKind::kReady, 7, {"own-pause-sender"}, 0.5, not_running);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(got->arrived.empty());
  const Status st = inbox.AwaitFromAll(*p.receiver, MessageKind::kDone, 3, {"own-pause-sender"}, 0.3);
  EXPECT_EQ(st.code(), ErrorCode::kTimedOut) << st.ToString();
}

}  // namespace
}  // namespace shardwire::workflows
