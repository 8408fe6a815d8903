// The membership leader's catch-up holds (src/workflows/membership.h) on an in-process
// rendezvous: a push waits at most hold_s in all, even while an engine that crash-loops keeps
// filing new holds faster than each one runs out.
#include "workflows/membership.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "shardwire/rendezvous.h"

namespace shardwire::workflows {
namespace {

TEST(MembershipLeader, HoldsFiledAgainAndAgainDelayAPushAtMostHoldSeconds) {
  InProcessRendezvous rz;
  constexpr double kHoldS = 0.5;
  MembershipLeader leader(kHoldS);
  std::atomic<bool> published{false};
  std::promise<void> first_filed;
  std::thread crash_loop([&] {
    // A new process of engine rank 0 every 0.1 s, each filing a hold and never joining; it
    // stops when the push is published (or after 30 s: then the test fails below).
    const auto stop_at = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (std::uint64_t incarnation = 1; !published.load() && std::chrono::steady_clock::now() < stop_at;
         ++incarnation) {
      const bool filed = FileMembershipRequest(rz, "job", 0, incarnation, /*hold=*/true).ok();
      if (incarnation == 1) first_filed.set_value();
      ASSERT_TRUE(filed);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  // The push starts once the first hold is filed (not after a sleep that a slow run outlasts).
  if (first_filed.get_future().wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    published = true;
    crash_loop.join();
    FAIL() << "the first hold was never filed";
  }
  HoldWait held;
  const auto start = std::chrono::steady_clock::now();
  auto m = leader.Publish(rz, "job", 1, 1, &held);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  published = true;
  crash_loop.join();
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_TRUE(m->members.empty()) << "a process that only held must not be a member";
  ASSERT_EQ(held.ranks.size(), 1u);
  ASSERT_EQ(held.expired.size(), 1u) << "the hold must have run out, not been released";
  EXPECT_GE(held.seconds, kHoldS * 0.9);
  // A bound, not a speed measurement: hold_s plus generous slack; without the overall cap the
  // push waits until the crash loop stops (30 s).
  EXPECT_LT(took, 15) << "the push waited past its overall hold bound";
}

// A hold's acknowledgement names the version the live engines serve: the leader's last
// published push, also when versions skip numbers (a training step), not version - 1 (found by
// review, session 35: a catch-up then waited for a version that was never pushed).
TEST(MembershipLeader, AHoldIsAcknowledgedWithTheLastPublishedVersionWhenVersionsSkip) {
  InProcessRendezvous rz;
  MembershipLeader leader(/*hold_s=*/0.2);
  ASSERT_TRUE(leader.Publish(rz, "job", 1, 10).ok());
  auto request = FileMembershipRequest(rz, "job", 0, 1, /*hold=*/true);
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  auto push = std::async(std::launch::async, [&] { return leader.Publish(rz, "job", 1, 20); });
  auto serving = AwaitHold(rz, "job", 0, *request, 60);
  ASSERT_TRUE(serving.ok()) << serving.status().ToString();
  EXPECT_EQ(*serving, 10u) << "the hold must name v10, the last push, not v19";
  EXPECT_TRUE(push.get().ok());  // the hold runs out (0.2 s) and v20 is published
}

}  // namespace
}  // namespace shardwire::workflows
