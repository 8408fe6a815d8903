#include "workflows/sync_messages.h"

#include <gtest/gtest.h>

namespace shardwire::workflows {
namespace {

TEST(SyncMessages, RoundTripAndRejectForeignPayloads) {
  const auto bytes = Encode({MessageKind::kDone, 0x0102030405060708ull});
  ASSERT_EQ(bytes.size(), 9u);
  EXPECT_EQ(bytes[0], std::byte{2});
  EXPECT_EQ(bytes[1], std::byte{0x08});  // little-endian version
  auto m = Decode(bytes);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->kind, MessageKind::kDone);
  EXPECT_EQ(m->version, 0x0102030405060708ull);
  std::vector<std::byte> wrong_kind = bytes;
  wrong_kind[0] = std::byte{7};
  EXPECT_FALSE(Decode(wrong_kind).has_value());
  EXPECT_FALSE(Decode(std::span<const std::byte>(bytes).first(8)).has_value());
}

TEST(SyncMessages, BlockAmaxCarriesFloatsBitForBit) {
  Message m{MessageKind::kBlockAmax, 7, {1.5f, 0.0f, 448.0f, 1e-30f}};
  const auto bytes = Encode(m);
  ASSERT_EQ(bytes.size(), 9u + 16u);
  EXPECT_EQ(bytes[0], std::byte{3});
  EXPECT_EQ(bytes[9 + 3], std::byte{0x3F});  // 1.5f = 0x3FC00000, little-endian
  auto back = Decode(bytes);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->version, 7u);
  EXPECT_EQ(back->amax, m.amax);
  // A float cut in half is not a message; READY with more than a buffer byte is not either.
  EXPECT_FALSE(Decode(std::span<const std::byte>(bytes).first(11)).has_value());
  auto ready = Encode({MessageKind::kReady, 1});
  ready.push_back(std::byte{0});
  ready.push_back(std::byte{0});
  EXPECT_FALSE(Decode(ready).has_value());
}

TEST(SyncMessages, ReadyNamesTheBufferOfADoubleBufferedEngine) {
  Message m{MessageKind::kReady, 9};
  m.buffer = 1;
  const auto bytes = Encode(m);
  ASSERT_EQ(bytes.size(), 10u);
  auto back = Decode(bytes);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->buffer, std::optional<std::uint8_t>(1));
  EXPECT_FALSE(Decode(Encode({MessageKind::kReady, 9})).value().buffer.has_value());
  auto bad = bytes;
  bad[9] = std::byte{2};  // only buffers 0 and 1 exist
  EXPECT_FALSE(Decode(bad).has_value());
  auto done = Encode({MessageKind::kDone, 9});
  done.push_back(std::byte{0});  // only READY names a buffer
  EXPECT_FALSE(Decode(done).has_value());
}

// READY under dynamic membership names the engine process's incarnation, after the buffer byte
// when there is one: 17 bytes without a buffer, 18 with.
TEST(SyncMessages, ReadyNamesTheIncarnationOfTheProcessThatSentIt) {
  Message m{MessageKind::kReady, 9};
  m.incarnation = 0x0102030405060708ull;
  const auto bytes = Encode(m);
  ASSERT_EQ(bytes.size(), 17u);
  EXPECT_EQ(bytes[9], std::byte{0x08});  // little-endian
  auto back = Decode(bytes);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->incarnation, m.incarnation);
  EXPECT_FALSE(back->buffer.has_value());
  m.buffer = 1;
  const auto with_buffer = Encode(m);
  ASSERT_EQ(with_buffer.size(), 18u);
  EXPECT_EQ(with_buffer[9], std::byte{1});
  back = Decode(with_buffer);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->buffer, std::optional<std::uint8_t>(1));
  EXPECT_EQ(back->incarnation, m.incarnation);
  EXPECT_FALSE(Decode(Encode({MessageKind::kReady, 9})).value().incarnation.has_value());
  auto bad = with_buffer;
  bad[9] = std::byte{7};  // the buffer byte is still checked
  EXPECT_FALSE(Decode(bad).has_value());
  for (std::size_t size : {11u, 16u, 19u}) {  // nothing between or beyond
    std::vector<std::byte> cut = with_buffer;
    cut.resize(size);
    EXPECT_FALSE(Decode(cut).has_value()) << size << " bytes";
  }
  Message done{MessageKind::kDone, 9};
  done.incarnation = 3;  // only READY carries it
  EXPECT_EQ(Encode(done).size(), 9u);
}

TEST(SyncMessages, DoneCarriesTheDigestOfTheBytesSent) {
  Message m{MessageKind::kDone, 12};
  m.digest = 0x0123456789ABCDEFull;
  const auto bytes = Encode(m);
  ASSERT_EQ(bytes.size(), 17u);
  EXPECT_EQ(bytes[9], std::byte{0xEF});  // little-endian
  const auto back = Decode(bytes);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->kind, MessageKind::kDone);
  EXPECT_EQ(back->version, 12u);
  ASSERT_TRUE(back->digest.has_value());
  EXPECT_EQ(*back->digest, 0x0123456789ABCDEFull);
  const auto plain = Decode(Encode({MessageKind::kDone, 12}));
  ASSERT_TRUE(plain.has_value());
  EXPECT_FALSE(plain->digest.has_value());
  // A digest on any other kind, or a truncated one, is not a sync message.
  std::vector<std::byte> missed = bytes;
  missed[0] = static_cast<std::byte>(MessageKind::kMissed);
  EXPECT_FALSE(Decode(missed).has_value());
  EXPECT_FALSE(Decode(std::span(bytes).first(16)).has_value());
}

// A MISSED from a trainer whose push failed carries its error: code, length, message (cut to
// kMaxMissedReasonBytes at a character boundary); a plain MISSED stays 9 bytes.
TEST(SyncMessages, MissedCarriesTheFailedPushsError) {
  Message m{.kind = MessageKind::kMissed, .version = 5, .reason = CorruptData("NaN in \"wq\" at [0, 300]")};
  const auto bytes = Encode(m);
  ASSERT_EQ(bytes.size(), 12u + 23u);
  EXPECT_EQ(bytes[9], static_cast<std::byte>(ErrorCode::kCorruptData));
  EXPECT_EQ(bytes[10], std::byte{23});  // little-endian length
  const auto back = Decode(bytes);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->kind, MessageKind::kMissed);
  EXPECT_EQ(back->version, 5u);
  ASSERT_TRUE(back->reason.has_value());
  EXPECT_EQ(back->reason->code(), ErrorCode::kCorruptData);
  EXPECT_EQ(back->reason->message(), "NaN in \"wq\" at [0, 300]");
  EXPECT_EQ(Encode(*back), bytes);
  const auto plain = Decode(Encode({MessageKind::kMissed, 5}));
  ASSERT_TRUE(plain.has_value());
  EXPECT_FALSE(plain->reason.has_value());
  EXPECT_EQ(Encode({MessageKind::kMissed, 5}).size(), 9u);
  // A length that disagrees with the payload or code 0 (OK) is not a sync message.
  EXPECT_FALSE(Decode(std::span(bytes).first(bytes.size() - 1)).has_value());
  std::vector<std::byte> wrong = bytes;
  wrong[9] = std::byte{0};
  EXPECT_FALSE(Decode(wrong).has_value());
  // A code past this build's last is a newer peer's error: still a MISSED that ends the wait
  // (it was dropped as malformed, and the engine waited out its timeout), as kInternal with the
  // peer's message, and it re-encodes as sent.
  for (int code : {static_cast<int>(ErrorCode::kFailedPrecondition) + 1, 255}) {
    std::vector<std::byte> newer = bytes;
    newer[9] = static_cast<std::byte>(code);
    const auto from_newer = Decode(newer);
    ASSERT_TRUE(from_newer.has_value()) << code;
    ASSERT_TRUE(from_newer->reason.has_value());
    EXPECT_EQ(from_newer->reason->code(), ErrorCode::kInternal);
    EXPECT_EQ(from_newer->reason->message(), "NaN in \"wq\" at [0, 300]");
    EXPECT_EQ(from_newer->unknown_reason_code, code);
    EXPECT_EQ(Encode(*from_newer), newer);
  }
  EXPECT_EQ(back->unknown_reason_code, 0);
  // A long message is cut to kMaxMissedReasonBytes, never inside a UTF-8 character.
  std::string text(kMaxMissedReasonBytes - 1, 'x');
  text += "\xC3\xA9tail";  // a two-byte character straddling the cut
  Message longer{.kind = MessageKind::kMissed, .version = 6, .reason = Internal(text)};
  const auto cut = Decode(Encode(longer));
  ASSERT_TRUE(cut.has_value());
  EXPECT_EQ(cut->reason->message(), std::string(kMaxMissedReasonBytes - 1, 'x'));
}

TEST(SyncMessages, RoundDoneCarriesItsRound) {
  Message m{MessageKind::kRoundDone, 7};
  m.round = 0x01020304u;
  const auto bytes = Encode(m);
  ASSERT_EQ(bytes.size(), 13u);
  EXPECT_EQ(bytes[9], std::byte{0x04});  // little-endian
  const auto back = Decode(bytes);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->kind, MessageKind::kRoundDone);
  EXPECT_EQ(back->version, 7u);
  EXPECT_EQ(back->round, 0x01020304u);
  EXPECT_STREQ(MessageKindName(MessageKind::kRoundDone), "ROUND_DONE");
  // Without its round, or with a round on another kind, it is not a sync message.
  EXPECT_FALSE(Decode(std::span(bytes).first(9)).has_value());
  std::vector<std::byte> addend = bytes;
  addend[0] = static_cast<std::byte>(MessageKind::kAddend);
  EXPECT_FALSE(Decode(addend).has_value());
}

TEST(SyncMessages, RelayPlanNamesTheParentAndTheChildrenToForwardTo) {
  Message m{MessageKind::kRelayPlan, 5};
  m.relay_from = 2;
  m.relay_to = {{4, 1, 7}, {6, 0, 0x0102030405060708ull}};
  const auto bytes = Encode(m);
  ASSERT_EQ(bytes.size(), 14u + 2 * 13u);
  const auto back = Decode(bytes);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->kind, MessageKind::kRelayPlan);
  EXPECT_EQ(back->version, 5u);
  EXPECT_EQ(back->relay_from, std::optional<std::uint32_t>(2));
  EXPECT_EQ(back->relay_to, m.relay_to);
  const auto direct = Decode(Encode({MessageKind::kRelayPlan, 5}));
  ASSERT_TRUE(direct.has_value());
  EXPECT_FALSE(direct->relay_from.has_value());
  EXPECT_TRUE(direct->relay_to.empty());
  // A count that does not match the payload, or a buffer other than 0 or 1, is refused.
  EXPECT_FALSE(Decode(std::span(bytes).first(bytes.size() - 1)).has_value());
  std::vector<std::byte> bad_buffer = bytes;
  bad_buffer[14 + 4] = std::byte{2};
  EXPECT_FALSE(Decode(bad_buffer).has_value());
  // The most children a plan carries (kMaxRelayFanout) round-trip.
  Message widest{MessageKind::kRelayPlan, 6};
  for (std::uint32_t c = 0; c < 255; ++c) widest.relay_to.push_back({c + 1, static_cast<std::uint8_t>(c % 2), c});
  const auto widest_back = Decode(Encode(widest));
  ASSERT_TRUE(widest_back.has_value());
  EXPECT_EQ(widest_back->relay_to, widest.relay_to);
  // RELAYED is the bare 9-byte form.
  EXPECT_EQ(Encode({MessageKind::kRelayed, 5}).size(), 9u);
  EXPECT_STREQ(MessageKindName(MessageKind::kRelayed), "RELAYED");
  // SLOTS_OPEN too: kind 10, the version, nothing more.
  const auto slots_open = Encode({MessageKind::kSlotsOpen, 0x0102030405060708ull});
  ASSERT_EQ(slots_open.size(), 9u);
  EXPECT_EQ(slots_open[0], std::byte{10});
  EXPECT_EQ(slots_open[1], std::byte{0x08});
  const auto opened = Decode(slots_open);
  ASSERT_TRUE(opened.has_value());
  EXPECT_EQ(opened->kind, MessageKind::kSlotsOpen);
  EXPECT_EQ(opened->version, 0x0102030405060708ull);
  EXPECT_STREQ(MessageKindName(MessageKind::kSlotsOpen), "SLOTS_OPEN");
  std::vector<std::byte> longer_open = slots_open;
  longer_open.push_back(std::byte{0});
  EXPECT_FALSE(Decode(longer_open).has_value());
}

TEST(SyncMessages, WithdrawnCarriesTheMembershipRequest) {
  Message m{MessageKind::kWithdrawn, 11};
  m.request = 0x0102030405060708ll;
  const auto bytes = Encode(m);
  ASSERT_EQ(bytes.size(), 17u);
  EXPECT_EQ(bytes[0], std::byte{9});
  EXPECT_EQ(bytes[9], std::byte{0x08});  // little-endian
  const auto back = Decode(bytes);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->kind, MessageKind::kWithdrawn);
  EXPECT_EQ(back->version, 11u);
  EXPECT_EQ(back->request, 0x0102030405060708ll);
  EXPECT_STREQ(MessageKindName(MessageKind::kWithdrawn), "WITHDRAWN");
  // Without its request, or with one byte more, it is not a sync message.
  EXPECT_FALSE(Decode(std::span(bytes).first(9)).has_value());
  std::vector<std::byte> longer = bytes;
  longer.push_back(std::byte{0});
  EXPECT_FALSE(Decode(longer).has_value());
}

TEST(SyncMessages, MetadataKeyNamesJobRoleRank) { EXPECT_EQ(MetadataKey("job", "engine", 3), "job/engine/3"); }

}  // namespace
}  // namespace shardwire::workflows
