// RedisClock (src/control/redis_clock.h): Cristian's algorithm against scripted clocks, and the
// parsing of Redis TIME replies.
#include "control/redis_clock.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

namespace shardwire::control {
namespace {

// A local clock that reads a scripted list of microsecond values, one per call.
struct ScriptedLocal {
  std::deque<std::int64_t> reads;
  std::int64_t last = 0;
  std::int64_t operator()() {
    if (!reads.empty()) {
      last = reads.front();
      reads.pop_front();
    }
    return last;
  }
};

// Samples (local before, server, local after) with round trips 400, 10 and 900 us: the kept
// offset is the 10 us one's, server - midpoint, whatever the others (asymmetric delays) say.
TEST(RedisClock, KeepsTheOffsetOfTheShortestRoundTrip) {
  auto local = std::make_shared<ScriptedLocal>();
  local->reads = {1'000, 1'400, 2'000, 2'010, 3'000, 3'900};
  const std::vector<std::int64_t> server = {5'000'000'300, 5'000'001'005, 5'000'002'100};
  std::size_t next = 0;
  RedisClock clock([local] { return (*local)(); });
  ASSERT_TRUE(clock.Sync([&]() -> Result<std::int64_t> { return server.at(next++); }).ok());
  EXPECT_EQ(next, static_cast<std::size_t>(RedisClock::kSyncSamples));
  EXPECT_EQ(clock.last_round_trip_us(), 10);
  // offset = 5'000'001'005 - 2'005 = 4'999'999'000 us; at local 11'000 us: 5'000'010'000 us.
  local->reads = {11'000};
  EXPECT_EQ(clock.NowMs(), 5'000'010);
  local->reads = {11'999};
  EXPECT_EQ(clock.NowMs(), 5'000'010) << "milliseconds are floored";
  local->reads = {12'000};
  EXPECT_EQ(clock.NowMs(), 5'000'011);
}

TEST(RedisClock, AFailedSyncKeepsTheLastOffset) {
  auto local = std::make_shared<ScriptedLocal>();
  local->reads = {0, 2, 10, 12, 20, 22};
  RedisClock clock([local] { return (*local)(); });
  ASSERT_TRUE(clock.Sync([]() -> Result<std::int64_t> { return std::int64_t{7'000'001}; }).ok());
  local->reads = {100, 102};
  int calls = 0;
  Status s = clock.Sync([&]() -> Result<std::int64_t> {
    ++calls;
    return Unavailable("Redis at redis://127.0.0.1:1 is unreachable");
  });
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable);
  EXPECT_NE(s.message().find("redis://127.0.0.1:1"), std::string::npos) << s.message();
  EXPECT_EQ(calls, 1) << "the first failed read ends the Sync";
  // The first Sync's offset: 7'000'001 - 1 = 7'000'000 us; at local 1'000 us: 7'001 ms.
  local->reads = {1'000};
  EXPECT_EQ(clock.NowMs(), 7'001);
  EXPECT_EQ(clock.last_round_trip_us(), 2);
}

// Round trips all longer than kMaxRoundTripUs: a first Sync takes the best it has (nothing
// better to keep), a later one keeps the earlier, more exact offset and says why.
TEST(RedisClock, SlowRoundTripsKeepABetterEarlierOffset) {
  auto local = std::make_shared<ScriptedLocal>();
  const std::int64_t slow = RedisClock::kMaxRoundTripUs + 2;
  local->reads = {0, slow, 10 * slow, 11 * slow, 20 * slow, 21 * slow};
  RedisClock clock([local] { return (*local)(); });
  ASSERT_TRUE(clock.Sync([]() -> Result<std::int64_t> { return std::int64_t{9'000'000}; }).ok());
  EXPECT_EQ(clock.last_round_trip_us(), slow);
  const std::int64_t first_offset = 9'000'000 - slow / 2;

  local->reads = {100 * slow, 100 * slow + 4, 101 * slow, 101 * slow + 4, 102 * slow, 102 * slow + 4};
  ASSERT_TRUE(clock.Sync([]() -> Result<std::int64_t> { return std::int64_t{5'000'000'000}; }).ok());
  const std::int64_t good_offset = 5'000'000'000 - (100 * slow + 2);
  EXPECT_EQ(clock.last_round_trip_us(), 4);

  local->reads = {200 * slow, 201 * slow, 202 * slow, 203 * slow, 204 * slow, 205 * slow};
  Status s = clock.Sync([]() -> Result<std::int64_t> { return std::int64_t{1}; });
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable);
  EXPECT_NE(s.message().find("the last offset is kept"), std::string::npos) << s.message();
  local->reads = {300'000'000};
  EXPECT_EQ(clock.NowMs(), (300'000'000 + good_offset) / 1000);
  EXPECT_NE(good_offset, first_offset);
  EXPECT_EQ(clock.last_round_trip_us(), 4);
}

// A first offset measured over a slow round trip (Redis loaded while the coordinator started)
// gives way to a less slow one, though that one too exceeds kMaxRoundTripUs; a slower one
// still does not replace it. (It was kept as long as round trips stayed above the bound.)
TEST(RedisClock, ASlowFirstOffsetGivesWayToABetterSlowOne) {
  auto local = std::make_shared<ScriptedLocal>();
  const std::int64_t bound = RedisClock::kMaxRoundTripUs;
  local->reads = {0, 8 * bound, 10 * bound, 18 * bound, 20 * bound, 28 * bound};  // 8x the bound each
  RedisClock clock([local] { return (*local)(); });
  ASSERT_TRUE(clock.Sync([]() -> Result<std::int64_t> { return std::int64_t{9'000'000'000}; }).ok());
  EXPECT_EQ(clock.last_round_trip_us(), 8 * bound);

  local->reads = {100 * bound, 102 * bound, 110 * bound, 112 * bound, 120 * bound, 122 * bound};  // 2x
  ASSERT_TRUE(clock.Sync([]() -> Result<std::int64_t> { return std::int64_t{9'100'000'000}; }).ok());
  EXPECT_EQ(clock.last_round_trip_us(), 2 * bound);
  const std::int64_t kept_offset = 9'100'000'000 - 101 * bound;

  local->reads = {200 * bound, 203 * bound, 210 * bound, 213 * bound, 220 * bound, 223 * bound};  // 3x
  const Status s = clock.Sync([]() -> Result<std::int64_t> { return std::int64_t{1}; });
  EXPECT_EQ(s.code(), ErrorCode::kUnavailable) << s.message();
  EXPECT_EQ(clock.last_round_trip_us(), 2 * bound);
  local->reads = {300 * bound};
  EXPECT_EQ(clock.NowMs(), (300 * bound + kept_offset) / 1000);
}

TEST(RedisClock, BeforeTheFirstSyncItIsTheWallClock) {
  RedisClock clock([] { return std::int64_t{0}; });
  const auto wall = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  const std::int64_t before = wall();
  const std::int64_t now = clock.NowMs();
  const std::int64_t after = wall();
  EXPECT_GE(now, before);
  EXPECT_LE(now, after);
  EXPECT_EQ(clock.last_round_trip_us(), -1);
}

// A reply owned by the test: an array of the given strings, or one non-array reply.
struct FakeReply {
  std::vector<std::string> texts;
  std::vector<redisReply> parts;
  std::vector<redisReply*> pointers;
  redisReply top{};

  explicit FakeReply(std::vector<std::string> t, int part_type = REDIS_REPLY_STRING) : texts(std::move(t)) {
    parts.resize(texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
      parts[i] = redisReply{};
      parts[i].type = part_type;
      parts[i].str = texts[i].data();
      parts[i].len = texts[i].size();
      pointers.push_back(&parts[i]);
    }
    top.type = REDIS_REPLY_ARRAY;
    top.elements = pointers.size();
    top.element = pointers.data();
  }
};

TEST(ParseRedisTimeUs, ReadsSecondsAndMicroseconds) {
  FakeReply r({"1796651933", "000042"});
  auto us = ParseRedisTimeUs(r.top, "Redis at x");
  ASSERT_TRUE(us.ok()) << us.status().ToString();
  EXPECT_EQ(*us, 1796651933LL * 1000000 + 42);
  FakeReply max({"253402300799", "999999"});
  EXPECT_EQ(*ParseRedisTimeUs(max.top, "x"), 253402300799LL * 1000000 + 999999);
}

TEST(ParseRedisTimeUs, AnythingElseIsCorruptDataNamingWhere) {
  const std::vector<std::vector<std::string>> bad = {
      {},
      {"1796651933"},
      {"1796651933", "1", "2"},
      {"1796651933", "1000000"},
      {"-1796651933", "1"},
      {"1796651933", ""},
      {"17966x1933", "1"},
      {"253402300800", "0"},
      {"99999999999999999999", "0"},
  };
  for (const auto& texts : bad) {
    FakeReply r(texts);
    auto us = ParseRedisTimeUs(r.top, "Redis at redis://h:1");
    ASSERT_FALSE(us.ok()) << ::testing::PrintToString(texts);
    EXPECT_EQ(us.status().code(), ErrorCode::kCorruptData);
    EXPECT_NE(us.status().message().find("Redis at redis://h:1"), std::string::npos) << us.status().message();
  }
  FakeReply integers({"1796651933", "1"}, REDIS_REPLY_INTEGER);
  EXPECT_EQ(ParseRedisTimeUs(integers.top, "x").status().code(), ErrorCode::kCorruptData);
  FakeReply not_array({"1796651933"});
  not_array.parts[0].type = REDIS_REPLY_STRING;
  EXPECT_EQ(ParseRedisTimeUs(not_array.parts[0], "x").status().code(), ErrorCode::kCorruptData);
}

}  // namespace
}  // namespace shardwire::control
