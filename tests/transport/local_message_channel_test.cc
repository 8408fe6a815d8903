// LocalMessageChannel / LocalMessageLink (src/transport/local_message_channel.h):
// real Unix-domain SOCK_SEQPACKET sockets in one process.
#include <gtest/gtest.h>

#include <algorithm>
#include <span>
#include <string>
#include <vector>

#include "transport/local_message_channel.h"

namespace shardwire::transport {
namespace {

std::vector<std::byte> Record(std::size_t size, std::uint8_t seed) {
  std::vector<std::byte> r(size);
  for (std::size_t i = 0; i < size; ++i) r[i] = static_cast<std::byte>((seed * 131 + i * 7) & 0xFF);
  return r;
}

// Polls until `want` records arrived or 2,000 polls found nothing more.
std::vector<std::vector<std::byte>> Drain(LocalMessageChannel& c, std::size_t want) {
  std::vector<std::vector<std::byte>> got;
  for (int idle = 0; got.size() < want && idle < 2000; ++idle) {
    if (c.Poll([&](const std::byte* d, std::size_t n) { got.emplace_back(d, d + n); }) != 0) idle = 0;
  }
  return got;
}

TEST(LocalMessageChannel, RecordsArriveWholeAndInOrderFromEverySender) {
  auto channel = LocalMessageChannel::Open(1, 0);
  ASSERT_TRUE(channel.ok()) << channel.status().ToString();
  auto a = LocalMessageLink::Connect((*channel)->Address());
  auto b = LocalMessageLink::Connect((*channel)->Address());
  ASSERT_TRUE(a.ok() && b.ok());
  std::vector<std::vector<std::byte>> sent;
  for (int i = 0; i < 20; ++i) {
    // 1 byte, sizes around one record (kMaxLocalRecordBytes - 1 payload bytes), and several records.
    const std::size_t sizes[] = {1, kMaxLocalRecordBytes - 2, kMaxLocalRecordBytes - 1, kMaxLocalRecordBytes,
                                 3 * kMaxLocalRecordBytes + 17};
    const std::size_t size = i < 5 ? sizes[i] : 1000 * static_cast<std::size_t>(i) + (i == 19 ? (1u << 20) : 0);
    sent.push_back(Record(size, static_cast<std::uint8_t>(i)));
    auto r = (i % 2 == 0 ? *a : *b)->Send(sent.back(), nullptr);  // sent, or queued behind earlier ones
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  // Every record arrives byte for byte; per sender in the order sent.
  auto got = Drain(**channel, sent.size());
  for (auto* link : {a->get(), b->get()})
    for (int i = 0; i < 100 && link->Queued(); ++i) {
      link->Flush();
      auto more = Drain(**channel, 1);
      got.insert(got.end(), more.begin(), more.end());
    }
  ASSERT_EQ(got.size(), sent.size());
  std::vector<std::vector<std::byte>> from_a, from_b, got_a, got_b;
  for (std::size_t i = 0; i < sent.size(); ++i) (i % 2 == 0 ? from_a : from_b).push_back(sent[i]);
  for (const auto& g : got) {
    const bool is_a = std::find(from_a.begin(), from_a.end(), g) != from_a.end();
    (is_a ? got_a : got_b).push_back(g);
  }
  EXPECT_EQ(got_a, from_a);
  EXPECT_EQ(got_b, from_b);
}

TEST(LocalMessageChannel, AFullConnectionQueuesAndFlushesInOrderWithCompletions) {
  auto channel = LocalMessageChannel::Open(2, 0);
  ASSERT_TRUE(channel.ok());
  auto link = LocalMessageLink::Connect((*channel)->Address());
  ASSERT_TRUE(link.ok());
  // Nobody polls: the connection fills, later records queue in the link.
  int queued = 0, done = 0, sent_at_once = 0;
  for (int i = 0; i < 64; ++i) {
    auto r = (*link)->Send(Record(64 << 10, static_cast<std::uint8_t>(i)), [&](const Status* e) {
      EXPECT_EQ(e, nullptr);
      ++done;
    });
    ASSERT_TRUE(r.ok());
    (*r ? sent_at_once : queued)++;
  }
  ASSERT_GT(queued, 0) << "the socket took 64 x 64 KiB without queueing; the test shows nothing";
  EXPECT_TRUE((*link)->Queued());
  std::vector<std::vector<std::byte>> got;
  for (int round = 0; round < 10000 && got.size() < 64; ++round) {
    (*channel)->Poll([&](const std::byte* d, std::size_t n) { got.emplace_back(d, d + n); });
    (*link)->Flush();
  }
  ASSERT_EQ(got.size(), 64u);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(got[static_cast<std::size_t>(i)], Record(64 << 10, static_cast<std::uint8_t>(i))) << i;
  EXPECT_EQ(done, queued);
  EXPECT_FALSE((*link)->Queued());
}

TEST(LocalMessageChannel, BadSendsAndAddressesAreTypedErrors) {
  auto channel = LocalMessageChannel::Open(3, 1);
  ASSERT_TRUE(channel.ok());
  auto link = LocalMessageLink::Connect((*channel)->Address());
  ASSERT_TRUE(link.ok());
  EXPECT_EQ((*link)->Send({}, nullptr).status().code(), ErrorCode::kInvalidArgument);

  const std::string nobody = "shardwire-no-such-channel";
  auto missing = LocalMessageLink::Connect(std::as_bytes(std::span(nobody)));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kPeerDisconnected);
  EXPECT_NE(missing.status().message().find(nobody), std::string::npos) << missing.status().ToString();
}

TEST(LocalMessageChannel, AClosedReceiverFailsQueuedAndLaterSends) {
  auto channel = LocalMessageChannel::Open(4, 0);
  ASSERT_TRUE(channel.ok());
  auto link = LocalMessageLink::Connect((*channel)->Address());
  ASSERT_TRUE(link.ok());
  int failed = 0;
  for (int i = 0; i < 64; ++i)
    ASSERT_TRUE((*link)->Send(Record(64 << 10, 1), [&](const Status* e) { failed += e != nullptr; }).ok());
  ASSERT_TRUE((*link)->Queued());
  channel->reset();  // the receiving process went away
  EXPECT_FALSE((*link)->Flush());
  EXPECT_GT(failed, 0);
  EXPECT_FALSE((*link)->Queued());
  auto later = (*link)->Send(Record(10, 2), nullptr);
  ASSERT_FALSE(later.ok());
  EXPECT_EQ(later.status().code(), ErrorCode::kPeerDisconnected);
}

}  // namespace
}  // namespace shardwire::transport
