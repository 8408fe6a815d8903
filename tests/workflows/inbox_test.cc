// workflows::Inbox::AwaitFromAll (src/workflows/sync_messages.h) between two real agents in
// this process: what a repeated wait for the same version sees, a wait of timeout 0, and a
// MISSED carrying an error code this build does not know.
#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <thread>
#include <vector>

#include "agent_pair.h"
#include "shardwire/status.h"
#include "workflows/sync_messages.h"

namespace shardwire::workflows {
namespace {

// A peer that gave a version up (MISSED without a reason: it was not ready in time for it) ends
// the wait; a second wait for that version ends at once too, with the same error, instead of
// waiting out its bound (30 s here) for a DONE that will not come. A wait for the next version
// does not see it.
TEST(Inbox, AVersionAPeerGaveUpEndsEveryWaitForIt) {
  AgentPair p = ConnectedPair("inbox-gave-up");
  ASSERT_TRUE(p.sender && p.receiver);
  Inbox inbox;
  ASSERT_TRUE(p.sender->SendMessage(p.receiver_name, Encode({MessageKind::kMissed, 4})).ok());
  for (int attempt = 0; attempt < 2; ++attempt) {
    const Status st =
        inbox.AwaitFromAll(*p.receiver, MessageKind::kDone, 4, {p.sender_name}, 30, nullptr, MessageKind::kMissed);
    EXPECT_EQ(st.code(), ErrorCode::kTimedOut) << st.ToString();
    EXPECT_NE(st.message().find(p.sender_name + " gave up on v4"), std::string::npos)
        << "attempt " << attempt << ": " << st.ToString();
  }
  ASSERT_TRUE(p.sender->SendMessage(p.receiver_name, Encode({MessageKind::kDone, 5})).ok());
  const Status next =
      inbox.AwaitFromAll(*p.receiver, MessageKind::kDone, 5, {p.sender_name}, 30, nullptr, MessageKind::kMissed);
  EXPECT_TRUE(next.ok()) << next.ToString();
}

// A wait of timeout 0 takes a message already queued at the agent (before, it failed before
// reading any: a check without waiting could never succeed). Polled until the message was
// delivered to the receiving agent; a wait that never reads the agent fails every poll.
TEST(Inbox, AWaitOfTimeoutZeroTakesWhatArrived) {
  AgentPair p = ConnectedPair("inbox-zero");
  ASSERT_TRUE(p.sender && p.receiver);
  Inbox inbox;
  const Status none = inbox.AwaitFromAll(*p.receiver, MessageKind::kDone, 2, {p.sender_name}, 0);
  EXPECT_EQ(none.code(), ErrorCode::kTimedOut) << none.ToString();
  ASSERT_TRUE(p.sender->SendMessage(p.receiver_name, Encode({MessageKind::kDone, 2})).ok());
  Status st = TimedOut("not polled");
  for (int poll = 0; poll < 2000 && !st.ok(); ++poll) {
    st = inbox.AwaitFromAll(*p.receiver, MessageKind::kDone, 2, {p.sender_name}, 0);
    if (!st.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(st.ok()) << st.ToString();
}

// A MISSED whose error code a newer build added ends the wait with kInternal, naming the code
// and carrying the peer's message (it was dropped as malformed: the wait ran out its bound).
TEST(Inbox, AMissedWithAnErrorCodeOfANewerBuildEndsTheWait) {
  AgentPair p = ConnectedPair("inbox-newer");
  ASSERT_TRUE(p.sender && p.receiver);
  std::vector<std::byte> missed = Encode({.kind = MessageKind::kMissed, .version = 9, .reason = Internal("boom")});
  missed[9] = std::byte{200};  // the code byte (sync_messages.h, Message::reason)
  ASSERT_TRUE(p.sender->SendMessage(p.receiver_name, missed).ok());
  Inbox inbox;
  const Status st =
      inbox.AwaitFromAll(*p.receiver, MessageKind::kDone, 9, {p.sender_name}, 30, nullptr, MessageKind::kMissed);
  EXPECT_EQ(st.code(), ErrorCode::kInternal) << st.ToString();
  EXPECT_NE(st.message().find("error code 200, which this build does not know"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("boom"), std::string::npos) << st.ToString();
}

}  // namespace
}  // namespace shardwire::workflows
