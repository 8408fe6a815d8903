// Conformance of every CoordinatorState backend (in memory, Redis) to the
// contract of src/control/coordinator_state.h, plus Redis-only tests:
// concurrency across two state objects on one Redis, leases expiring with no
// state object alive (key TTL), corrupt records, Redis down and back, Redis
// restarted with its data (script cache lost -> NOSCRIPT reload).
//
// Time is passed in (now_ms), so staleness and reaping need no sleeps; only the
// TTL test sleeps (1.3 s) because Redis expires keys in real time. Redis is a
// real redis-server started by tests/control/redis_fixture.h.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <limits>
#include <mutex>
#include <thread>

#include "control/coordinator_state.h"
#include "control/coordinator_state_redis.h"
#include "control/redis_fixture.h"
#include "control/state_id.h"
#include "control/test_util.h"

namespace shardwire::control {
namespace {

using testing_util::BytesOf;
using testing_util::Pattern;
using testing_util::RedisServer;

std::int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

LeasePolicy Policy() {
  LeasePolicy p;
  p.source_stale_after_s = 10;
  p.source_delete_after_s = 60;
  p.source_mark_hold_s = 30;
  p.member_expire_after_s = 5;
  return p;
}

SourceRecord Source(const std::string& identity, const std::string& instance, int rank, int world) {
  SourceRecord r;
  r.model_identity = identity;
  r.instance_id = instance;
  r.rank = rank;
  r.world_size = world;
  r.layout = "tp=" + std::to_string(world);
  r.layout_fingerprint = "fp-" + std::to_string(world);
  r.metadata = BytesOf(std::string("meta\0", 5) + instance + std::to_string(rank));
  r.attributes["region"] = "3";
  r.attributes[std::string("bin\0key", 7)] = std::string("v\0\xff", 3);
  return r;
}

JobMember Member(const std::string& id, JobRole role = JobRole::kSubscriber) {
  JobMember m;
  m.member_id = id;
  m.role = role;
  m.group = "engine-1";
  m.rank = 1;
  m.world_size = 2;
  m.layout = "tp=2";
  m.metadata = Pattern(1000, 7);
  m.metadata[3] = std::byte{0};
  m.attributes["k"] = std::string("a\0b", 3);
  return m;
}

// The status of an asynchronous heartbeat's outcome (members: Status; sources: a Result).
Status StatusOf(Status s) { return s; }
template <typename T>
Status StatusOf(const Result<T>& r) {
  return r.status();
}

// Counts the completions of asynchronous state calls and waits for them
// (bounded: a callback that never comes fails the test instead of hanging it).
// Expect's callback takes either heartbeat's outcome and keeps its status.
class Completions {
 public:
  auto Expect(Status* out) {
    {
      std::lock_guard lock(mu_);
      ++expected_;
    }
    return [this, out](const auto& outcome) {
      std::lock_guard lock(mu_);
      if (out != nullptr) *out = StatusOf(outcome);
      ++done_;
      cv_.notify_all();
    };
  }
  // True when every expected callback came (exactly once each: more would show as done > expected).
  bool Wait(int* done = nullptr) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, std::chrono::seconds(30), [&] { return done_ >= expected_; });
    if (done != nullptr) *done = done_;
    return done_ == expected_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int expected_ = 0, done_ = 0;
};

// One Redis server shared by the parameterized suite (flushed before each test).
RedisServer* shared_redis = nullptr;
std::string shared_redis_error;

class CoordinatorStateTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    if (shared_redis == nullptr && RedisServer::Available()) {
      shared_redis = RedisServer::Start(&shared_redis_error).release();
    }
  }
  static void TearDownTestSuite() {
    delete shared_redis;
    shared_redis = nullptr;
  }

  void SetUp() override {
    if (GetParam() == "memory") {
      state_ = MakeInMemoryCoordinatorState(Policy());
      return;
    }
    if (!RedisServer::Available()) GTEST_SKIP() << RedisServer::SkipReason();
    ASSERT_NE(shared_redis, nullptr) << shared_redis_error;
    ASSERT_EQ(shared_redis->Command({"FLUSHALL"}), "OK");
    auto st = ConnectRedisCoordinatorState(shared_redis->url(), Policy(), 5.0);
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    state_ = std::move(st).value();
  }

  std::unique_ptr<CoordinatorState> state_;
};

TEST_P(CoordinatorStateTest, KvPutGetAddAndGeneration) {
  auto& st = *state_;
  auto g0 = st.KvGeneration();
  ASSERT_TRUE(g0.ok());
  auto missing = st.Get("k");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  const std::string binary("a\0b\xff", 4);
  ASSERT_TRUE(st.Put("k", BytesOf(binary)).ok());
  auto got = st.Get("k");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ(**got, BytesOf(binary));
  ASSERT_TRUE(st.Put("empty", {}).ok());
  ASSERT_TRUE(st.Get("empty")->has_value());
  EXPECT_TRUE(st.Get("empty")->value().empty());
  // Keys are binary too and do not collide with each other.
  const std::string key2("k\0x", 3);
  ASSERT_TRUE(st.Put(key2, BytesOf("other")).ok());
  EXPECT_EQ(**st.Get("k"), BytesOf(binary));
  EXPECT_EQ(**st.Get(key2), BytesOf("other"));
  auto g1 = st.KvGeneration();
  ASSERT_TRUE(g1.ok());
  EXPECT_NE(*g0, *g1);
  EXPECT_EQ(*st.Add("c", 5), 5);
  EXPECT_EQ(*st.Add("c", -7), -2);
  EXPECT_EQ(*st.Add("c", 0), -2);
  EXPECT_EQ(**st.Get("c"), BytesOf("-2"));
  EXPECT_NE(*st.KvGeneration(), *g1);
  // Exact int64 arithmetic (no double rounding anywhere).
  const std::int64_t big = std::numeric_limits<std::int64_t>::max() - 1;
  EXPECT_EQ(*st.Add("big", big), big);
  EXPECT_EQ(*st.Add("big", 1), std::numeric_limits<std::int64_t>::max());
  auto overflow = st.Add("big", 1);
  EXPECT_EQ(overflow.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(*st.Add("big", 0), std::numeric_limits<std::int64_t>::max()) << "failed Add changed the counter";
  auto bad = st.Add("k", 1);
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(**st.Get("k"), BytesOf(binary)) << "failed Add changed the value";
  // Both backends take exactly what Redis's INCRBY takes as a counter: canonical decimal int64
  // (no sign on zero, no '+', no leading zeros or spaces); anything else is refused unchanged.
  for (const char* text : {"007", "-0", "+5", " 5", "5 ", "18446744073709551615", ""}) {
    ASSERT_TRUE(st.Put("t", BytesOf(text)).ok());
    EXPECT_EQ(st.Add("t", 1).status().code(), ErrorCode::kInvalidArgument) << "'" << text << "'";
    EXPECT_EQ(**st.Get("t"), BytesOf(text)) << "'" << text << "'";
  }
  ASSERT_TRUE(st.Put("t", BytesOf("-9")).ok());
  EXPECT_EQ(*st.Add("t", 1), -8);
  EXPECT_EQ(st.Put("", BytesOf("x")).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(st.Get("").status().code(), ErrorCode::kInvalidArgument);
}

TEST_P(CoordinatorStateTest, AnAddWithARequestIdIsAppliedOnce) {
  auto& st = *state_;
  EXPECT_EQ(*st.Add("n", 3, "req-1"), 3);
  EXPECT_EQ(*st.Add("n", 3, "req-1"), 3) << "a retry returns the first result";
  EXPECT_EQ(*st.Add("n", 0), 3) << "and did not add again";
  EXPECT_EQ(*st.Add("n", 3, "req-2"), 6);
  EXPECT_EQ(*st.Add("n", 1), 7);
  EXPECT_EQ(*st.Add("n", 1), 8) << "without an id every call adds";
  // A request id names one Add on one key: the same id on another key is another Add (found by
  // coordinator_request_fuzzer: it used to return the first key's counter and add nothing).
  EXPECT_EQ(*st.Add("m", 5, "req-1"), 5);
  EXPECT_EQ(*st.Add("m", 0), 5) << "the Add on another key was applied";
  EXPECT_EQ(*st.Add("n", 3, "req-1"), 3) << "and the first key's retry still returns its own result";
}

TEST_P(CoordinatorStateTest, RegisterAndListRoundTripsEveryField) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  SourceRecord big = Source("m1", "b-inst", 1, 2);
  big.metadata = Pattern(1 << 20, 3);  // 1 MiB, zero bytes included
  big.metadata[0] = std::byte{0};
  big.state = SourceState::kStale;
  big.stale_reason = "ignored";
  auto a1 = st.RegisterSource(big, t0);
  auto a0 = st.RegisterSource(Source("m1", "b-inst", 0, 2), t0 + 1);
  auto other = st.RegisterSource(Source("m2", "a-inst", 0, 1), t0 + 2);
  ASSERT_TRUE(a1.ok() && a0.ok() && other.ok()) << a1.status().ToString();
  EXPECT_EQ(a1->source_id.size(), 20u);  // assigned (none was proposed)
  EXPECT_EQ(a1->source_id.substr(0, 4), "src-");
  EXPECT_NE(a1->source_id, a0->source_id);
  EXPECT_EQ(a1->state, SourceState::kReady);
  EXPECT_TRUE(a1->stale_reason.empty());
  EXPECT_EQ(a1->registered_unix_ms, t0);
  EXPECT_EQ(a1->last_heartbeat_unix_ms, t0);

  auto m1 = st.ListSources("m1", std::nullopt, t0 + 3);
  ASSERT_TRUE(m1.ok()) << m1.status().ToString();
  ASSERT_EQ(m1->size(), 2u);
  // Sorted by (instance_id, rank), not by registration order.
  EXPECT_EQ((*m1)[0].source_id, a0->source_id);
  EXPECT_EQ((*m1)[1].source_id, a1->source_id);
  const SourceRecord& r = (*m1)[1];
  EXPECT_EQ(r.model_identity, "m1");
  EXPECT_EQ(r.instance_id, "b-inst");
  EXPECT_EQ(r.rank, 1);
  EXPECT_EQ(r.world_size, 2);
  EXPECT_EQ(r.layout, "tp=2");
  EXPECT_EQ(r.layout_fingerprint, "fp-2");
  EXPECT_EQ(r.metadata, big.metadata);
  EXPECT_EQ(r.attributes, big.attributes);
  EXPECT_EQ(r.state, SourceState::kReady);
  EXPECT_EQ(r.registered_unix_ms, t0);
  EXPECT_EQ(r.last_heartbeat_unix_ms, t0);

  auto all = st.ListSources("", std::nullopt, t0 + 3);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].source_id, other->source_id);  // "a-inst" first
  auto none = st.ListSources("m3", std::nullopt, t0 + 3);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_P(CoordinatorStateTest, StalenessIsDerivedFromTheHeartbeatTime) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  auto a = st.RegisterSource(Source("m", "i", 0, 2), t0);
  auto b = st.RegisterSource(Source("m", "i", 1, 2), t0);
  ASSERT_TRUE(a.ok() && b.ok());
  auto ready = [&](std::int64_t now) { return st.ListSources("m", SourceState::kReady, now).value().size(); };
  auto stale = [&](std::int64_t now) { return st.ListSources("m", SourceState::kStale, now).value().size(); };
  EXPECT_EQ(ready(t0 + 9'999), 2u);
  EXPECT_EQ(stale(t0 + 9'999), 0u);
  // No Reap and no write: the lease alone makes them STALE.
  EXPECT_EQ(ready(t0 + 10'000), 0u);
  EXPECT_EQ(stale(t0 + 10'000), 2u);
  auto listed = st.ListSources("m", std::nullopt, t0 + 10'000).value();
  EXPECT_FALSE(listed[0].stale_reason.empty());
  // A heartbeat makes one READY again and renews its lease.
  ASSERT_TRUE(st.HeartbeatSource(a->source_id, t0 + 12'000).ok());
  EXPECT_EQ(ready(t0 + 12'000), 1u);
  EXPECT_EQ(st.ListSources("m", SourceState::kReady, t0 + 21'999).value()[0].last_heartbeat_unix_ms, t0 + 12'000);
  // A heartbeat with an older time never moves the heartbeat backwards.
  ASSERT_TRUE(st.HeartbeatSource(a->source_id, t0 + 11'000).ok());
  EXPECT_EQ(st.ListSources("m", SourceState::kReady, t0 + 12'000).value()[0].last_heartbeat_unix_ms, t0 + 12'000);
}

// A loader's held mark keeps a source STALE for source_mark_hold_s (30 s here) whatever its
// heartbeats say, keeping the loader's reason; the first heartbeat after the hold makes it
// READY; a mark without hold lasts until the next heartbeat; a second held mark restarts the
// hold; the listing and the counts agree throughout.
// (Until session 43 the next heartbeat, a second later, made it READY: every load tried a
// source serving corrupt bytes again.)
TEST_P(CoordinatorStateTest, ALoadersMarkHoldsTheSourceStaleAgainstHeartbeats) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  auto a = st.RegisterSource(Source("m", "i", 0, 1), t0);
  auto b = st.RegisterSource(Source("m", "j", 0, 1), t0);
  ASSERT_TRUE(a.ok() && b.ok());
  auto state_of_a = [&](std::int64_t now) {
    const std::vector<SourceRecord> listed = st.ListSources("m", std::nullopt, now).value();
    for (const SourceRecord& r : listed) {
      if (r.source_id == a->source_id) return std::make_pair(r.state, r.stale_reason);
    }
    ADD_FAILURE() << "source a not listed at t0 + " << now - t0;
    return std::make_pair(SourceState::kReady, std::string("not listed"));
  };
  ASSERT_TRUE(st.MarkSourceStale(a->source_id, "digest mismatch", t0 + 1'000, /*hold=*/true).ok());
  for (std::int64_t at : {2'000, 15'000, 30'999}) {  // heartbeats within the hold
    ASSERT_TRUE(st.HeartbeatSource(a->source_id, t0 + at).ok());
    EXPECT_EQ(state_of_a(t0 + at), std::make_pair(SourceState::kStale, std::string("digest mismatch")))
        << "at t0 + " << at;
  }
  auto counts = st.CountSources(t0 + 2'000);
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->ready, 1u);  // b
  EXPECT_EQ(counts->stale, 1u);  // a, held
  // The heartbeats renewed the lease meanwhile: the hold ends, the next heartbeat makes it READY.
  EXPECT_EQ(st.ListSources("m", SourceState::kStale, t0 + 31'000).value().size(), 2u);  // a held, b's lease ended
  ASSERT_TRUE(st.HeartbeatSource(a->source_id, t0 + 31'000).ok());
  EXPECT_EQ(state_of_a(t0 + 31'000), std::make_pair(SourceState::kReady, std::string()));
  // A mark without hold (a stall) lasts until the next heartbeat.
  ASSERT_TRUE(st.MarkSourceStale(a->source_id, "stalled", t0 + 31'500, /*hold=*/false).ok());
  EXPECT_EQ(state_of_a(t0 + 31'500), std::make_pair(SourceState::kStale, std::string("stalled")));
  ASSERT_TRUE(st.HeartbeatSource(a->source_id, t0 + 31'600).ok());
  EXPECT_EQ(state_of_a(t0 + 31'600), std::make_pair(SourceState::kReady, std::string()));
  // A second held mark restarts the hold from its own time; the reaper does not end it, nor
  // does a mark without hold made meanwhile (it changes the reason only).
  ASSERT_TRUE(st.MarkSourceStale(a->source_id, "corrupt", t0 + 32'000, /*hold=*/true).ok());
  ASSERT_TRUE(st.MarkSourceStale(a->source_id, "corrupt again", t0 + 50'000, /*hold=*/true).ok());
  ASSERT_TRUE(st.Reap(t0 + 51'000).ok());
  ASSERT_TRUE(st.MarkSourceStale(a->source_id, "stalled", t0 + 52'000, /*hold=*/false).ok());
  ASSERT_TRUE(st.HeartbeatSource(a->source_id, t0 + 79'999).ok());
  EXPECT_EQ(state_of_a(t0 + 79'999), std::make_pair(SourceState::kStale, std::string("stalled")));
  ASSERT_TRUE(st.HeartbeatSource(a->source_id, t0 + 80'000).ok());
  EXPECT_EQ(state_of_a(t0 + 80'000), std::make_pair(SourceState::kReady, std::string()));
}

// A heartbeat tells the source of a loader's mark it carried: a mark without hold once, by
// the heartbeat that clears it; a held mark at every heartbeat while it holds (STALE), then
// once more by the heartbeat that clears it (READY); a lease that merely ran out is no mark,
// also once the reaper wrote it down. Every other heartbeat goes the asynchronous way (the
// server's; Redis: a pipeline), which must find the same.
TEST_P(CoordinatorStateTest, AHeartbeatTellsTheSourceOfALoadersMark) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  auto a = st.RegisterSource(Source("m", "i", 0, 1), t0);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  int beats = 0;
  auto beat = [&](std::int64_t at) {
    Result<SourceHeartbeat> found = Internal("no answer");
    if (++beats % 2 == 0) {
      // Shared: a callback after the wait below gave up must not write into a dead promise.
      auto answered = std::make_shared<std::promise<Result<SourceHeartbeat>>>();
      auto future = answered->get_future();
      st.HeartbeatSourceAsync(a->source_id, t0 + at,
                              [answered](Result<SourceHeartbeat> r) { answered->set_value(std::move(r)); });
      if (future.wait_for(std::chrono::seconds(10)) == std::future_status::ready) found = future.get();
    } else {
      found = st.HeartbeatSource(a->source_id, t0 + at);
    }
    EXPECT_TRUE(found.ok()) << found.status().ToString() << " (beat " << beats << ")";
    return found.ok() ? *found : SourceHeartbeat{SourceState::kStale, "the heartbeat failed"};
  };
  auto expect = [](const SourceHeartbeat& found, SourceState state, const std::string& reason, const char* when) {
    EXPECT_EQ(found.state, state) << when;
    EXPECT_EQ(found.stale_reason, reason) << when;
  };
  expect(beat(1'000), SourceState::kReady, "", "unmarked");
  auto reaped = st.Reap(t0 + 11'500);  // writes down the lease that ran out
  ASSERT_TRUE(reaped.ok()) << reaped.status().ToString();
  EXPECT_EQ(reaped->sources_marked_stale, 1);
  auto listed = st.ListSources("m", std::nullopt, t0 + 11'500);
  ASSERT_TRUE(listed.ok() && listed->size() == 1u);
  EXPECT_EQ((*listed)[0].state, SourceState::kStale);
  EXPECT_NE((*listed)[0].stale_reason.find("no heartbeat"), std::string::npos) << (*listed)[0].stale_reason;
  expect(beat(12'000), SourceState::kReady, "", "after its lease ran out and was reaped (STALE, no mark)");
  EXPECT_EQ(st.ListSources("m", SourceState::kReady, t0 + 12'000).value().size(), 1u);
  ASSERT_TRUE(st.MarkSourceStale(a->source_id, "stalled for 5 s", t0 + 12'500, /*hold=*/false).ok());
  expect(beat(13'000), SourceState::kReady, "stalled for 5 s", "the heartbeat that clears a mark");
  expect(beat(14'000), SourceState::kReady, "", "the mark was reported once");
  ASSERT_TRUE(st.MarkSourceStale(a->source_id, "block 3 digest mismatch", t0 + 15'000, /*hold=*/true).ok());
  expect(beat(16'000), SourceState::kStale, "block 3 digest mismatch", "within the hold");
  expect(beat(44'999), SourceState::kStale, "block 3 digest mismatch", "the hold's last ms");
  expect(beat(45'000), SourceState::kReady, "block 3 digest mismatch", "the hold's end");
  expect(beat(46'000), SourceState::kReady, "", "after the hold");
  EXPECT_EQ(st.ListSources("m", SourceState::kReady, t0 + 46'000).value().size(), 1u);
}

TEST_P(CoordinatorStateTest, SourcesPastDeleteAfterAreGone) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  auto a = st.RegisterSource(Source("m", "i", 0, 1), t0);
  auto b = st.RegisterSource(Source("m", "j", 0, 1), t0);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(st.HeartbeatSource(b->source_id, t0 + 30'000).ok());
  EXPECT_EQ(st.ListSources("m", std::nullopt, t0 + 59'999).value().size(), 2u);
  auto left = st.ListSources("m", std::nullopt, t0 + 60'000).value();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].source_id, b->source_id);
  EXPECT_EQ(st.HeartbeatSource(a->source_id, t0 + 60'000).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(st.MarkSourceStale(a->source_id, "x", t0 + 60'000, false).code(), ErrorCode::kNotFound);
  EXPECT_EQ(st.ListSources("", std::nullopt, t0 + 60'000).value().size(), 1u);
}

// A registration under an id the caller proposes is idempotent: a repeat (a retry whose first
// reply was lost) returns the stored record with its lease renewed and lists once; other
// contents under a live record of the id are kAlreadyExists; once the record is gone the id
// is free again. (Without proposals a timed-out registration's retry left an orphan record.)
TEST_P(CoordinatorStateTest, ARegistrationUnderAProposedIdIsIdempotent) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  SourceRecord r = Source("m", "i", 0, 1);
  r.source_id = "src-00000000000000aa";
  auto first = st.RegisterSource(r, t0);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->source_id, "src-00000000000000aa");
  ASSERT_TRUE(st.MarkSourceStale(first->source_id, "x", t0 + 1, /*hold=*/true).ok());
  auto again = st.RegisterSource(r, t0 + 5'000);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->source_id, first->source_id);
  EXPECT_EQ(again->registered_unix_ms, t0);  // the first registration's
  EXPECT_EQ(again->state, SourceState::kStale);  // a repeat does not escape a loader's mark
  EXPECT_EQ(again->stale_reason, "x");
  auto listed = st.ListSources("m", std::nullopt, t0 + 12'000);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].state, SourceState::kStale);  // held; the repeat renewed the lease
  EXPECT_EQ((*listed)[0].last_heartbeat_unix_ms, t0 + 5'000);
  auto after_hold = st.RegisterSource(r, t0 + 30'001);  // the hold ended: the repeat clears the mark
  ASSERT_TRUE(after_hold.ok()) << after_hold.status().ToString();
  EXPECT_EQ(after_hold->state, SourceState::kReady);
  EXPECT_EQ(st.ListSources("m", SourceState::kReady, t0 + 30'001).value().size(), 1u);
  SourceRecord other = r;
  other.metadata = BytesOf("another process");
  auto clash = st.RegisterSource(other, t0 + 6'000);
  EXPECT_EQ(clash.status().code(), ErrorCode::kAlreadyExists) << clash.status().ToString();
  EXPECT_EQ(st.ListSources("m", std::nullopt, t0 + 6'000).value()[0].metadata, r.metadata);
  auto after = st.RegisterSource(other, t0 + 30'001 + 60'000);  // past delete-after: the id is free
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(after->source_id, r.source_id);
  auto now_listed = st.ListSources("m", std::nullopt, t0 + 90'002).value();
  ASSERT_EQ(now_listed.size(), 1u);
  EXPECT_EQ(now_listed[0].metadata, other.metadata);
}

// The metrics scrape's count agrees with the listing at every moment of a source's life:
// READY, STALE by its lease or by a mark, gone after delete-after or a deregistration.
TEST_P(CoordinatorStateTest, CountsAgreeWithTheListing) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  auto expect_counts = [&](std::int64_t now, std::uint64_t ready, std::uint64_t stale) {
    auto counts = st.CountSources(now);
    ASSERT_TRUE(counts.ok()) << counts.status().ToString();
    EXPECT_EQ(counts->ready, ready) << "at t0 + " << now - t0;
    EXPECT_EQ(counts->stale, stale) << "at t0 + " << now - t0;
    auto listed = st.ListSources("", std::nullopt, now);
    ASSERT_TRUE(listed.ok());
    std::uint64_t listed_ready = 0;
    for (const auto& r : *listed) listed_ready += r.state == SourceState::kReady;
    EXPECT_EQ(listed_ready, ready);
    EXPECT_EQ(listed->size() - listed_ready, stale);
  };
  expect_counts(t0, 0, 0);
  auto a = st.RegisterSource(Source("m1", "a", 0, 1), t0);
  auto b = st.RegisterSource(Source("m1", "b", 0, 1), t0);
  auto c = st.RegisterSource(Source("m2", "c", 0, 1), t0);
  auto d = st.RegisterSource(Source("m2", "d", 0, 1), t0);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  expect_counts(t0 + 1, 4, 0);
  ASSERT_TRUE(st.MarkSourceStale(a->source_id, "bad bytes", t0 + 2, false).ok());
  ASSERT_TRUE(st.DeregisterSource(d->source_id).ok());
  expect_counts(t0 + 3, 2, 1);
  ASSERT_TRUE(st.HeartbeatSource(b->source_id, t0 + 30'000).ok());
  expect_counts(t0 + 30'000, 1, 2);  // c's lease ended: STALE
  expect_counts(t0 + 50'000, 0, 3);  // b's lease ended too
  ASSERT_TRUE(st.HeartbeatSource(b->source_id, t0 + 55'000).ok());
  expect_counts(t0 + 60'000, 1, 0);  // a and c past delete-after, b READY again
}

TEST_P(CoordinatorStateTest, DeregisterAndUnknownIds) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  auto a = st.RegisterSource(Source("m", "i", 0, 1), t0);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(st.HeartbeatSource("src-0000000000000000", t0).status().code(), ErrorCode::kNotFound);
  EXPECT_EQ(st.MarkSourceStale("src-0000000000000000", "x", t0, false).code(), ErrorCode::kNotFound);
  EXPECT_EQ(st.DeregisterSource("src-0000000000000000").code(), ErrorCode::kNotFound);
  ASSERT_TRUE(st.DeregisterSource(a->source_id).ok());
  EXPECT_EQ(st.DeregisterSource(a->source_id).code(), ErrorCode::kNotFound);
  EXPECT_EQ(st.HeartbeatSource(a->source_id, t0).status().code(), ErrorCode::kNotFound);
  EXPECT_TRUE(st.ListSources("m", std::nullopt, t0).value().empty());
  EXPECT_TRUE(st.ListSources("", std::nullopt, t0).value().empty());
}

TEST_P(CoordinatorStateTest, ReapMarksStaleDeletesAndExpiresMembers) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  auto a = st.RegisterSource(Source("m", "i", 0, 1), t0);
  auto b = st.RegisterSource(Source("m", "j", 0, 1), t0);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(st.JoinJob("job", Member("p0", JobRole::kPublisher), t0).ok());
  ASSERT_TRUE(st.JoinJob("job", Member("s0"), t0).ok());
  auto nothing = st.Reap(t0 + 1'000);
  ASSERT_TRUE(nothing.ok()) << nothing.status().ToString();
  EXPECT_EQ(nothing->sources_marked_stale + nothing->sources_deleted + nothing->members_expired, 0);

  ASSERT_TRUE(st.HeartbeatSource(b->source_id, t0 + 40'000).ok());
  ASSERT_TRUE(st.HeartbeatMember("job", "s0", t0 + 4'000).ok());
  const std::uint64_t epoch = st.GetJob("job", t0 + 4'000).value().membership_epoch;
  auto r1 = st.Reap(t0 + 8'000);  // p0 expired (5 s), s0 alive
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(r1->members_expired, 1);
  auto job = st.GetJob("job", t0 + 8'000).value();
  ASSERT_EQ(job.members.size(), 1u);
  EXPECT_EQ(job.members[0].member_id, "s0");
  EXPECT_EQ(job.membership_epoch, epoch + 1);

  auto r2 = st.Reap(t0 + 11'000);  // a stale
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->sources_marked_stale, 1);
  EXPECT_EQ(r2->sources_deleted, 0);
  auto r3 = st.Reap(t0 + 12'000);  // already marked: not counted again
  ASSERT_TRUE(r3.ok());
  EXPECT_EQ(r3->sources_marked_stale, 0);
  auto r4 = st.Reap(t0 + 60'000);  // a deleted; b (heartbeat at 40 s) stale
  ASSERT_TRUE(r4.ok());
  EXPECT_EQ(r4->sources_deleted, 1);
  EXPECT_EQ(r4->sources_marked_stale, 1);
  auto left = st.ListSources("", std::nullopt, t0 + 60'000).value();
  ASSERT_EQ(left.size(), 1u);
  EXPECT_EQ(left[0].source_id, b->source_id);
  EXPECT_EQ(left[0].state, SourceState::kStale);
}

TEST_P(CoordinatorStateTest, JobMembershipAndEpochs) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  const std::string job("rl/job:1\0x", 10);  // separators and zero bytes must not confuse keys
  EXPECT_EQ(st.GetJob(job, t0).status().code(), ErrorCode::kNotFound);
  auto v1 = st.JoinJob(job, Member("s1"), t0);
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  EXPECT_EQ(v1->job, job);
  ASSERT_EQ(v1->members.size(), 1u);
  auto v2 = st.JoinJob(job, Member("p0", JobRole::kPublisher), t0 + 1);
  ASSERT_TRUE(v2.ok());
  EXPECT_GT(v2->membership_epoch, v1->membership_epoch);
  ASSERT_EQ(v2->members.size(), 2u);
  EXPECT_EQ(v2->members[0].member_id, "p0");  // sorted by member_id
  const JobMember& s1 = v2->members[1];
  const JobMember want = Member("s1");
  EXPECT_EQ(s1.member_id, "s1");
  EXPECT_EQ(s1.role, JobRole::kSubscriber);
  EXPECT_EQ(s1.group, want.group);
  EXPECT_EQ(s1.rank, 1);
  EXPECT_EQ(s1.world_size, 2);
  EXPECT_EQ(s1.layout, "tp=2");
  EXPECT_EQ(s1.metadata, want.metadata);
  EXPECT_EQ(s1.attributes, want.attributes);
  EXPECT_EQ(s1.committed_version, 0u);
  EXPECT_EQ(s1.joined_unix_ms, t0);
  EXPECT_EQ(s1.last_heartbeat_unix_ms, t0);
  EXPECT_EQ(v2->members[0].role, JobRole::kPublisher);

  // A live member id cannot join twice; nothing changes.
  EXPECT_EQ(st.JoinJob(job, Member("s1"), t0 + 2).status().code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(st.GetJob(job, t0 + 2)->membership_epoch, v2->membership_epoch);
  // Another job is independent.
  EXPECT_EQ(st.GetJob("rl/job:1", t0).status().code(), ErrorCode::kNotFound);

  ASSERT_TRUE(st.LeaveJob(job, "p0", t0 + 3).ok());
  auto v3 = st.GetJob(job, t0 + 3);
  ASSERT_TRUE(v3.ok());
  EXPECT_EQ(v3->membership_epoch, v2->membership_epoch + 1);
  ASSERT_EQ(v3->members.size(), 1u);
  EXPECT_EQ(st.LeaveJob(job, "p0", t0 + 3).code(), ErrorCode::kNotFound);
  EXPECT_EQ(st.HeartbeatMember(job, "p0", t0 + 3).code(), ErrorCode::kNotFound);
  EXPECT_EQ(st.HeartbeatMember("nojob", "p0", t0 + 3).code(), ErrorCode::kNotFound);

  // Heartbeats keep s1 alive past the 5 s lease; without them it expires and
  // the epoch moves; it may then join again.
  ASSERT_TRUE(st.HeartbeatMember(job, "s1", t0 + 4'000).ok());
  auto alive = st.GetJob(job, t0 + 8'000);
  ASSERT_TRUE(alive.ok());
  EXPECT_EQ(alive->members.size(), 1u);
  auto gone = st.GetJob(job, t0 + 9'000);
  ASSERT_TRUE(gone.ok()) << "a job with history stays visible";
  EXPECT_TRUE(gone->members.empty());
  EXPECT_EQ(gone->membership_epoch, v3->membership_epoch + 1);
  EXPECT_EQ(st.HeartbeatMember(job, "s1", t0 + 9'000).code(), ErrorCode::kNotFound);
  auto again = st.JoinJob(job, Member("s1"), t0 + 9'000);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->membership_epoch, gone->membership_epoch + 1);
  EXPECT_EQ(again->members[0].committed_version, 0u);
}

// A refused join changes nothing at all: it does not even expire another member whose lease
// ran out (the in-memory state did, the Redis script did not); the next reap does.
TEST_P(CoordinatorStateTest, ARefusedJoinChangesNothing) {
  auto& st = *state_;
  const std::int64_t t1 = WallMs();
  ASSERT_TRUE(st.JoinJob("refused", Member("a"), t1).ok());
  ASSERT_TRUE(st.JoinJob("refused", Member("b"), t1 + 4'000).ok());
  EXPECT_EQ(st.JoinJob("refused", Member("b"), t1 + 6'000).status().code(), ErrorCode::kAlreadyExists);
  auto reaped = st.Reap(t1 + 6'000);
  ASSERT_TRUE(reaped.ok()) << reaped.status().ToString();
  EXPECT_EQ(reaped->members_expired, 1) << "the refused join had expired member a";
}

TEST_P(CoordinatorStateTest, CommittedVersionsNeverGoBackwards) {
  auto& st = *state_;
  const std::int64_t t0 = WallMs();
  ASSERT_TRUE(st.JoinJob("j", Member("s0"), t0).ok());
  ASSERT_TRUE(st.JoinJob("j", Member("s1"), t0).ok());
  ASSERT_TRUE(st.CommitVersion("j", "s0", 5, t0).ok());
  ASSERT_TRUE(st.CommitVersion("j", "s0", 5, t0).ok());  // equal: no-op
  EXPECT_EQ(st.CommitVersion("j", "s0", 4, t0).code(), ErrorCode::kFailedPrecondition);
  // 10 < 9 as strings, not as numbers: the comparison must be numeric.
  ASSERT_TRUE(st.CommitVersion("j", "s0", 10, t0).ok());
  EXPECT_EQ(st.CommitVersion("j", "s0", 9, t0).code(), ErrorCode::kFailedPrecondition);
  // Every uint64 survives exactly (beyond a double's 53 bits).
  const std::uint64_t huge = std::numeric_limits<std::uint64_t>::max() - 1;
  ASSERT_TRUE(st.CommitVersion("j", "s1", huge, t0).ok());
  EXPECT_EQ(st.CommitVersion("j", "s1", huge - 1, t0).code(), ErrorCode::kFailedPrecondition);
  auto v = st.GetJob("j", t0);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->members[0].committed_version, 10u);
  EXPECT_EQ(v->members[1].committed_version, huge);
  EXPECT_EQ(st.CommitVersion("j", "nobody", 1, t0).code(), ErrorCode::kNotFound);
  EXPECT_EQ(st.CommitVersion("nojob", "s0", 1, t0).code(), ErrorCode::kNotFound);
  // Committing does not change the membership epoch.
  EXPECT_EQ(st.GetJob("j", t0)->membership_epoch, 2u);
}

// A heartbeat batch (what the coordinator's heartbeat loop runs per ready batch):
// every call of the batch completes by the end of EndHeartbeatBatch(), each
// with its own status (a bad id in the middle fails alone), every source gets
// its own time, and calls after the batch are sent at once again. Inside the
// batch, before the end, nothing has been applied on Redis (the batch is
// held and sent as one round); in memory every call completes at once.
TEST_P(CoordinatorStateTest, HeartbeatBatchesCompleteEveryCallByTheirEnd) {
  CoordinatorState& st = *state_;
  const std::int64_t t0 = WallMs();
  std::vector<std::string> ids;
  for (int i = 0; i < 40; ++i) {
    auto r = st.RegisterSource(Source("m", "inst-" + std::to_string(i), 0, 1), t0);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ids.push_back(r->source_id);
  }
  ASSERT_TRUE(st.JoinJob("job", Member("s1"), t0).ok());
  std::vector<Status> results(ids.size(), InvalidArgument("never completed"));
  Status unknown = InvalidArgument("never completed"), member = InvalidArgument("never completed");
  std::atomic<int> completed{0};
  auto expect = [&](Status* out) {
    return [out, &completed](const auto& outcome) {
      *out = StatusOf(outcome);
      ++completed;
    };
  };
  st.BeginHeartbeatBatch();
  for (std::size_t i = 0; i < ids.size() / 2; ++i) st.HeartbeatSourceAsync(ids[i], t0 + 1000 + i, expect(&results[i]));
  st.HeartbeatSourceAsync("src-0000000000000000", t0 + 1000, expect(&unknown));
  st.HeartbeatMemberAsync("job", "s1", t0 + 1000, expect(&member));
  for (std::size_t i = ids.size() / 2; i < ids.size(); ++i) {
    st.HeartbeatSourceAsync(ids[i], t0 + 1000 + i, expect(&results[i]));
  }
  if (GetParam() == "redis") {
    EXPECT_EQ(completed.load(), 0) << "a Redis batch must be held until its end";
    // A synchronous call meanwhile (another connection) still sees the registration time.
    EXPECT_EQ(st.ListSources("m", std::nullopt, t0).value().at(0).last_heartbeat_unix_ms, t0);
  }
  st.EndHeartbeatBatch();
  EXPECT_EQ(completed.load(), static_cast<int>(ids.size()) + 2) << "every call of the batch completes by its end";
  for (const auto& r : results) EXPECT_TRUE(r.ok()) << r.ToString();
  EXPECT_EQ(unknown.code(), ErrorCode::kNotFound) << unknown.ToString();
  EXPECT_TRUE(member.ok()) << member.ToString();
  auto listed = st.ListSources("m", std::nullopt, t0 + 2000);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), ids.size());
  for (const auto& r : *listed) {
    const int i = std::stoi(r.instance_id.substr(5));
    EXPECT_EQ(r.last_heartbeat_unix_ms, t0 + 1000 + i) << r.source_id;
  }
  // After the batch, a heartbeat is sent at once (by its own caller) again.
  Status after = InvalidArgument("never completed");
  Completions done;
  st.HeartbeatSourceAsync(ids[0], t0 + 3000, done.Expect(&after));
  ASSERT_TRUE(done.Wait());
  EXPECT_TRUE(after.ok()) << after.ToString();
  EXPECT_EQ(st.GetJob("job", t0 + 1000)->members.at(0).last_heartbeat_unix_ms, t0 + 1000);
}

// The asynchronous heartbeats (what the coordinator's callback handlers call)
// apply exactly what the synchronous ones do: from several threads at once,
// every source gets its own latest time, unknown ids are kNotFound, and member
// heartbeats keep a member past its lease.
TEST_P(CoordinatorStateTest, AsyncHeartbeatsApplyLikeTheSynchronousOnes) {
  CoordinatorState& st = *state_;
  const std::int64_t t0 = WallMs();
  constexpr int kThreads = 4, kPerThread = 30, kBeats = 5;
  std::vector<std::string> ids;
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    auto r = st.RegisterSource(Source("m", "inst-" + std::to_string(i), 0, 1), t0);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ids.push_back(r->source_id);
  }
  Completions done;
  std::vector<Status> results(kThreads * kPerThread * kBeats, InvalidArgument("never completed"));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int beat = 1; beat <= kBeats; ++beat) {
        for (int k = 0; k < kPerThread; ++k) {
          const int i = t * kPerThread + k;
          st.HeartbeatSourceAsync(ids[i], t0 + beat * 1000 + i,
                                  done.Expect(&results[(beat - 1) * kThreads * kPerThread + i]));
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  int completed = 0;
  ASSERT_TRUE(done.Wait(&completed)) << completed << " of " << results.size() << " callbacks";
  for (const auto& r : results) ASSERT_TRUE(r.ok()) << r.ToString();
  auto listed = st.ListSources("m", std::nullopt, t0 + kBeats * 1000 + 1000);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), ids.size());
  for (const auto& r : *listed) {
    const int i = std::stoi(r.instance_id.substr(5));
    EXPECT_EQ(r.last_heartbeat_unix_ms, t0 + kBeats * 1000 + i) << r.source_id << ": a heartbeat was lost";
  }

  Status unknown, member_ok, member_unknown;
  st.HeartbeatSourceAsync("src-0000000000000000", t0, done.Expect(&unknown));
  ASSERT_TRUE(st.JoinJob("job", Member("s1"), t0).ok());
  st.HeartbeatMemberAsync("job", "s1", t0 + 4'000, done.Expect(&member_ok));
  st.HeartbeatMemberAsync("job", "nobody", t0 + 4'000, done.Expect(&member_unknown));
  ASSERT_TRUE(done.Wait());
  EXPECT_EQ(unknown.code(), ErrorCode::kNotFound) << unknown.ToString();
  EXPECT_TRUE(member_ok.ok()) << member_ok.ToString();
  EXPECT_EQ(member_unknown.code(), ErrorCode::kNotFound) << member_unknown.ToString();
  // The 5 s member lease runs from the async heartbeat at t0 + 4 s, not from the join.
  auto job = st.GetJob("job", t0 + 8'000);
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  ASSERT_EQ(job->members.size(), 1u);
  EXPECT_EQ(job->members[0].last_heartbeat_unix_ms, t0 + 4'000);
}

// The state id names the state: 32 hex digits, stable while the state lives; a
// second state object gets another id in memory and the same one on one Redis;
// a flushed Redis (the state lost) gets a new id at the next refresh.
TEST_P(CoordinatorStateTest, TheStateIdNamesTheStateUntilItIsLost) {
  const std::string id = state_->StateId();
  ASSERT_EQ(id.size(), 32u) << id;
  EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos) << id;
  ASSERT_TRUE(state_->RefreshStateId().ok());
  EXPECT_EQ(state_->StateId(), id);
  if (GetParam() == "memory") {
    EXPECT_NE(MakeInMemoryCoordinatorState(Policy())->StateId(), id);
    return;
  }
  auto other = ConnectRedisCoordinatorState(shared_redis->url(), Policy(), 5.0);
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  EXPECT_EQ((*other)->StateId(), id) << "two coordinators over one Redis serve one state";
  ASSERT_EQ(shared_redis->Command({"FLUSHALL"}), "OK");
  EXPECT_EQ(state_->StateId(), id) << "cached until the next refresh";
  ASSERT_TRUE((*other)->RefreshStateId().ok());
  ASSERT_TRUE(state_->RefreshStateId().ok());
  EXPECT_NE(state_->StateId(), id) << "a flushed Redis lost the state: it must get a new id";
  EXPECT_EQ((*other)->StateId(), state_->StateId()) << "the first refresh's id is the one both serve";
  // A stored id that is not one is corrupt data naming the key; the cached id stays.
  const std::string now_serving = state_->StateId();
  ASSERT_EQ(shared_redis->Command({"SET", "shardwire:v1:state_id", "not-an-id"}), "OK");
  Status bad = state_->RefreshStateId();
  EXPECT_EQ(bad.code(), ErrorCode::kCorruptData) << bad.ToString();
  EXPECT_NE(bad.message().find("shardwire:v1:state_id"), std::string::npos) << bad.message();
  EXPECT_EQ(state_->StateId(), now_serving);
}

// A bound call (coordinator_state.h, "Bound calls") names the state it belongs to: the state
// it names is served; another id is kFailedPrecondition naming it, and nothing changes. On
// Redis, a flushed Redis refuses bound calls of the old state at once, inside the script, not
// only after the next RefreshStateId, and the state object re-reads its id at the first refusal.
TEST_P(CoordinatorStateTest, ABoundCallOfALostStateIsRefusedAndChangesNothing) {
  const std::string id = state_->StateId();
  const std::int64_t t0 = WallMs();
  ASSERT_TRUE(state_->Put("k", BytesOf("v"), id).ok());
  auto added = state_->Add("n", 5, "", id);
  ASSERT_TRUE(added.ok()) << added.status().ToString();
  ASSERT_TRUE(state_->JoinJob("job", Member("m0"), t0, id).ok());

  // Every bound method against a state id that is not the one stored.
  auto expect_refused = [&](const std::string& bound, const std::string& when) {
    auto check = [&](const Status& s, const char* call) {
      EXPECT_EQ(s.code(), ErrorCode::kFailedPrecondition) << when << ", " << call << ": " << s.ToString();
      EXPECT_NE(s.message().find(bound), std::string::npos) << when << ", " << call << ": " << s.message();
    };
    check(state_->Put("k", BytesOf("changed"), bound), "Put");
    check(state_->Put("new-key", BytesOf("x"), bound), "Put of a new key");
    check(state_->Add("n", 1, "", bound).status(), "Add");
    check(state_->Add("fresh-counter", 1, "req-1", bound).status(), "Add of a new counter");
    check(state_->JoinJob("job", Member("m1"), t0 + 1, bound).status(), "JoinJob");
    check(state_->JoinJob("other-job", Member("m1"), t0 + 1, bound).status(), "JoinJob of a new job");
    check(state_->HeartbeatMember("job", "m0", t0 + 2, bound), "HeartbeatMember");
    check(state_->CommitVersion("job", "m0", 7, t0 + 2, bound), "CommitVersion");
    check(state_->GetJob("job", t0 + 2, bound).status(), "GetJob");
    check(state_->LeaveJob("job", "m0", t0 + 2, bound), "LeaveJob");
    Completions done;
    Status async_status;
    state_->HeartbeatMemberAsync("job", "m0", t0 + 3, done.Expect(&async_status), bound);
    ASSERT_TRUE(done.Wait()) << "HeartbeatMemberAsync never completed";
    check(async_status, "HeartbeatMemberAsync");
  };
  const std::string other = NewStateId();
  expect_refused(other, "a state id never served");
  // Nothing changed: the old values, counter, member and its heartbeat/version stand.
  auto v = state_->Get("k");
  ASSERT_TRUE(v.ok() && v->has_value());
  EXPECT_EQ(**v, BytesOf("v"));
  auto none = state_->Get("new-key");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  auto n = state_->Add("n", 0, "", id);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 5);
  auto job = state_->GetJob("job", t0 + 4, id);
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  ASSERT_EQ(job->members.size(), 1u);
  EXPECT_EQ(job->members[0].member_id, "m0");
  EXPECT_EQ(job->members[0].last_heartbeat_unix_ms, t0);
  EXPECT_EQ(job->members[0].committed_version, 0u);
  EXPECT_EQ(state_->GetJob("other-job", t0 + 4).status().code(), ErrorCode::kNotFound);
  // Unbound calls are served as before.
  EXPECT_TRUE(state_->Put("unbound", BytesOf("u")).ok());
  if (GetParam() == "memory") return;

  // Redis loses the data: every call bound to `id` is refused before any refresh, and the
  // store stays empty of what they would have written.
  ASSERT_EQ(shared_redis->Command({"FLUSHALL"}), "OK");
  ASSERT_EQ(state_->StateId(), id) << "no refresh has run yet";
  {
    SCOPED_TRACE("after FLUSHALL");
    Status put = state_->Put("k", BytesOf("into the empty state"), id);
    EXPECT_EQ(put.code(), ErrorCode::kFailedPrecondition) << put.ToString();
    EXPECT_NE(state_->StateId(), id) << "the first refused call re-reads the state id";
    expect_refused(id, "Redis flushed");
  }
  EXPECT_EQ(shared_redis->Command({"EXISTS", "shardwire:v1:kv:k"}), "0");
  EXPECT_EQ(shared_redis->Command({"EXISTS", "shardwire:v1:kv:n"}), "0");
  EXPECT_EQ(shared_redis->Command({"EXISTS", "shardwire:v1:kv:fresh-counter"}), "0");
  EXPECT_EQ(shared_redis->Command({"EXISTS", "shardwire:v1:jobs"}), "0");
  EXPECT_EQ(shared_redis->Command({"DBSIZE"}), "1") << "only the new state id";
  EXPECT_EQ(shared_redis->Command({"GET", "shardwire:v1:state_id"}), state_->StateId());
  // The new state serves calls bound to it.
  EXPECT_TRUE(state_->Put("k", BytesOf("new"), state_->StateId()).ok());
}

// A lease time beyond kMaxCoordinatorTimeS (which CoordinatorServer::Start refuses) is
// clamped to it by the state itself: 1e16 s no longer overflows int64 milliseconds and
// expires every member and source at once (found by review).
TEST_P(CoordinatorStateTest, LeaseTimesBeyondTheCapAreClampedNotOverflowed) {
  LeasePolicy huge;
  huge.source_stale_after_s = 1e16;
  huge.source_delete_after_s = 1e16;
  huge.member_expire_after_s = 1e16;
  std::unique_ptr<CoordinatorState> st;
  if (GetParam() == "memory") {
    st = MakeInMemoryCoordinatorState(huge);
  } else {
    auto r = ConnectRedisCoordinatorState(shared_redis->url(), huge, 5.0);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    st = std::move(r).value();
  }
  const std::int64_t t0 = WallMs();
  ASSERT_TRUE(st->JoinJob("j", Member("s0"), t0).ok());
  ASSERT_TRUE(st->RegisterSource(Source("m", "i", 0, 1), t0).ok());
  const std::int64_t later = t0 + 3'600'000;
  auto reap = st->Reap(later);
  ASSERT_TRUE(reap.ok()) << reap.status().ToString();
  EXPECT_EQ(reap->members_expired + reap->sources_deleted + reap->sources_marked_stale, 0);
  auto job = st->GetJob("j", later);
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  EXPECT_EQ(job->members.size(), 1u);
  auto ready = st->ListSources("m", SourceState::kReady, later);
  ASSERT_TRUE(ready.ok()) << ready.status().ToString();
  EXPECT_EQ(ready->size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Backends, CoordinatorStateTest, ::testing::Values("memory", "redis"),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// ------------------------------------------------------------ Redis only

class RedisStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!RedisServer::Available()) GTEST_SKIP() << RedisServer::SkipReason();
    std::string error;
    redis_ = RedisServer::Start(&error, NeedsAof());
    ASSERT_NE(redis_, nullptr) << error;
  }
  virtual bool NeedsAof() const { return false; }

  std::unique_ptr<CoordinatorState> Connect(LeasePolicy policy = Policy(), double timeout_s = 5.0) {
    auto st = ConnectRedisCoordinatorState(redis_->url(), policy, timeout_s);
    EXPECT_TRUE(st.ok()) << st.status().ToString();
    return st.ok() ? std::move(st).value() : nullptr;
  }

  std::unique_ptr<RedisServer> redis_;
};

// N threads x 2 state objects (two "coordinators") on one Redis: every
// registration, heartbeat, counter increment, join and commit lands exactly.
TEST_F(RedisStateTest, ConcurrentStateObjectsLoseNothing) {
  auto a = Connect();
  RedisStateOptions one;
  one.max_connections = 1;  // the other object: a single connection under its mutex
  auto b_or = ConnectRedisCoordinatorState(redis_->url(), Policy(), one);
  ASSERT_TRUE(a && b_or.ok());
  auto b = std::move(b_or).value();
  constexpr int kThreads = 8, kSources = 25, kBeats = 10;
  const std::int64_t t0 = WallMs();
  std::vector<std::vector<std::string>> ids(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      CoordinatorState& st = (t % 2 == 0) ? *a : *b;
      CoordinatorState& other = (t % 2 == 0) ? *b : *a;
      for (int s = 0; s < kSources; ++s) {
        auto r = st.RegisterSource(Source("m", "inst-" + std::to_string(t), s, kSources), t0);
        if (!r.ok()) {
          ++failures;
          continue;
        }
        ids[t].push_back(r->source_id);
        if (!st.Add("counter", 1).ok()) ++failures;
      }
      // Heartbeats alternate between both objects; the last one has the latest time.
      for (int beat = 1; beat <= kBeats; ++beat) {
        for (const auto& id : ids[t]) {
          CoordinatorState& via = (beat % 2 == 0) ? st : other;
          if (!via.HeartbeatSource(id, t0 + beat * 100 + t).ok()) ++failures;
        }
      }
      if (!st.JoinJob("job", Member("m-" + std::to_string(t)), t0).ok()) ++failures;
      for (std::uint64_t v = 1; v <= 20; ++v) {
        if (!other.CommitVersion("job", "m-" + std::to_string(t), v, t0).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  auto listed = a->ListSources("m", std::nullopt, t0 + 2'000);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), static_cast<size_t>(kThreads * kSources));
  for (const auto& r : *listed) {
    const int t = std::stoi(r.instance_id.substr(5));
    EXPECT_EQ(r.last_heartbeat_unix_ms, t0 + kBeats * 100 + t) << r.source_id << ": a heartbeat was lost";
    EXPECT_EQ(r.state, SourceState::kReady);
  }
  EXPECT_EQ(*b->Add("counter", 0), kThreads * kSources);
  auto job = b->GetJob("job", t0 + 1);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->members.size(), static_cast<size_t>(kThreads));
  EXPECT_EQ(job->membership_epoch, static_cast<std::uint64_t>(kThreads));
  for (const auto& m : job->members) EXPECT_EQ(m.committed_version, 20u) << m.member_id;
}

// The Redis state's clock is Redis's TIME (RedisClock), read without a round trip of its own;
// CoordinatorRedisProcess.CoordinatorsWhoseClocksDisagreeAgreeOnLeases shows what it is for.
TEST_F(RedisStateTest, TheStatesClockIsRedisTime) {
  auto st = Connect();
  ASSERT_TRUE(st);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(st->SyncClock().ok());
    const long long before = redis_->TimeMs();
    const std::int64_t now = st->NowMs();
    const long long after = redis_->TimeMs();
    ASSERT_GT(before, 0);
    // Bound: half a sync's shortest round trip; 1 s allows for a loaded machine.
    EXPECT_GE(now, before - 1000);
    EXPECT_LE(now, after + 1000);
  }
  redis_->Kill();
  EXPECT_EQ(st->SyncClock().code(), ErrorCode::kUnavailable) << "Redis is gone";
  const std::int64_t kept = st->NowMs();
  EXPECT_GT(kept, 0) << "the last measurement is kept";
}

// A Redis whose ACL refuses TIME (NOPERM): the state connects, keeps this machine's wall clock
// (logged once) and works; its SyncClock does nothing.
TEST_F(RedisStateTest, ARedisThatRefusesTimeLeavesTheWallClock) {
  ASSERT_EQ(redis_->Command({"ACL", "SETUSER", "default", "-time"}), "OK");
  ASSERT_NE(redis_->Command({"TIME"}).rfind("ERR NOPERM", 0), std::string::npos) << "the ACL did not take";
  auto st = Connect();
  ASSERT_TRUE(st);
  EXPECT_TRUE(st->SyncClock().ok());
  const std::int64_t before = WallMs();
  const std::int64_t now = st->NowMs();
  const std::int64_t after = WallMs();
  EXPECT_GE(now, before);
  EXPECT_LE(now, after);
  auto r = st->RegisterSource(Source("m", "i", 0, 1), st->NowMs());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto listed = st->ListSources("m", SourceState::kReady, st->NowMs());
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_EQ(listed->size(), 1u);
}

// A lease ends in Redis itself (key TTL) while no state object exists.
TEST_F(RedisStateTest, LeaseExpiresWithNoStateObjectAlive) {
  LeasePolicy p = Policy();
  p.source_stale_after_s = 0.5;
  p.source_delete_after_s = 3.0;  // the record is still there when checked, however slowly this runs
  std::string id;
  {
    auto st = Connect(p);
    ASSERT_TRUE(st);
    auto r = st->RegisterSource(Source("m", "i", 0, 1), WallMs());
    ASSERT_TRUE(r.ok());
    id = r->source_id;
    EXPECT_EQ(redis_->Command({"EXISTS", "shardwire:v1:src:" + id}), "1");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(3300));
  EXPECT_EQ(redis_->Command({"EXISTS", "shardwire:v1:src:" + id}), "0") << "Redis did not expire the record";
  EXPECT_EQ(redis_->Command({"EXISTS", "shardwire:v1:srcall"}), "0") << "the index outlived its sources";
  auto st = Connect(p);
  ASSERT_TRUE(st);
  EXPECT_TRUE(st->ListSources("", std::nullopt, WallMs()).value().empty());
  EXPECT_EQ(st->HeartbeatSource(id, WallMs()).status().code(), ErrorCode::kNotFound);
}

TEST_F(RedisStateTest, CorruptRecordsAreCorruptDataNamingTheKey) {
  auto st = Connect();
  ASSERT_TRUE(st);
  const std::int64_t t0 = WallMs();
  auto a = st->RegisterSource(Source("m", "i", 0, 1), t0);
  ASSERT_TRUE(a.ok());
  const std::string key = "shardwire:v1:src:" + a->source_id;

  // A truncated record blob.
  ASSERT_EQ(redis_->Command({"HSET", key, "rec", "SWS1\x05"}), "0");
  auto l1 = st->ListSources("m", std::nullopt, t0);
  EXPECT_EQ(l1.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(l1.status().message().find(key), std::string::npos) << l1.status().message();

  // A heartbeat time that is not a number.
  ASSERT_EQ(redis_->Command({"HSET", key, "hb", "yesterday"}), "0");
  Status hb = st->HeartbeatSource(a->source_id, t0).status();
  EXPECT_EQ(hb.code(), ErrorCode::kCorruptData);
  EXPECT_NE(hb.message().find(key), std::string::npos) << hb.message();
  EXPECT_EQ(redis_->Command({"HGET", key, "hb"}), "yesterday") << "a refused heartbeat changed the record";

  // A key of the wrong type.
  ASSERT_EQ(redis_->Command({"DEL", key}), "1");
  ASSERT_EQ(redis_->Command({"SET", key, "junk"}), "OK");
  auto l2 = st->ListSources("", std::nullopt, t0);
  EXPECT_EQ(l2.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(l2.status().message().find(key), std::string::npos) << l2.status().message();
  EXPECT_EQ(st->MarkSourceStale(a->source_id, "x", t0, false).code(), ErrorCode::kCorruptData);
  // The reaper skips what it cannot read instead of failing every pass.
  EXPECT_TRUE(st->Reap(t0).ok());

  // A job member with a broken blob, and a broken committed version.
  ASSERT_TRUE(st->JoinJob("j", Member("s0"), t0).ok());
  const std::string job_key = "shardwire:v1:job:6a";  // hex("j")
  ASSERT_EQ(redis_->Command({"HSET", job_key, "r:s0", "XXXX"}), "0");
  auto g = st->GetJob("j", t0);
  EXPECT_EQ(g.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(g.status().message().find(job_key), std::string::npos) << g.status().message();
  ASSERT_EQ(redis_->Command({"HSET", job_key, "v:s0", "-1"}), "0");
  EXPECT_EQ(st->CommitVersion("j", "s0", 3, t0).code(), ErrorCode::kCorruptData);
}

// Redis does not roll a script back when a command fails part-way: every script checks the
// keys and fields it will write before its first write, so a corrupt key refuses the change
// with kCorruptData naming the key and leaves the state exactly as it was (found by review,
// session 35: a Join wrote the member and then failed on a corrupt epoch).
TEST_F(RedisStateTest, ACorruptKeyRefusesAChangeBeforeAnythingIsWritten) {
  auto st = Connect();
  ASSERT_TRUE(st);
  const std::int64_t t0 = WallMs();
  // Put and Add with a corrupt generation counter: the value is not stored.
  ASSERT_EQ(redis_->Command({"SET", "shardwire:v1:kvgen", "many"}), "OK");
  const Status put = st->Put("k", BytesOf("v"));
  EXPECT_EQ(put.code(), ErrorCode::kCorruptData) << put.ToString();
  EXPECT_NE(put.message().find("shardwire:v1:kvgen"), std::string::npos) << put.ToString();
  EXPECT_EQ(redis_->Command({"EXISTS", "shardwire:v1:kv:k"}), "0") << "a refused Put stored its value";
  EXPECT_EQ(st->Add("n", 2).status().code(), ErrorCode::kCorruptData);
  EXPECT_EQ(redis_->Command({"EXISTS", "shardwire:v1:kv:n"}), "0") << "a refused Add changed its counter";
  ASSERT_EQ(redis_->Command({"SET", "shardwire:v1:kvgen", "7"}), "OK");
  EXPECT_TRUE(st->Put("k", BytesOf("v")).ok());

  // Register with the all-sources set of the wrong type: no record is created.
  ASSERT_EQ(redis_->Command({"SET", "shardwire:v1:srcall", "junk"}), "OK");
  auto reg = st->RegisterSource(Source("m", "i", 0, 1), t0);
  EXPECT_EQ(reg.status().code(), ErrorCode::kCorruptData) << reg.status().ToString();
  EXPECT_NE(reg.status().message().find("shardwire:v1:srcall"), std::string::npos) << reg.status().ToString();
  EXPECT_EQ(redis_->Command({"EVAL", "return #redis.call('KEYS', 'shardwire:v1:src:*')", "0"}), "0")
      << "a refused Register left a record";
  ASSERT_EQ(redis_->Command({"DEL", "shardwire:v1:srcall"}), "1");

  // Join and Leave with a corrupt epoch: membership unchanged.
  ASSERT_TRUE(st->JoinJob("j", Member("s0"), t0).ok());
  const std::string job_key = "shardwire:v1:job:6a";  // hex("j")
  ASSERT_EQ(redis_->Command({"HSET", job_key, "e", "one"}), "0");
  auto join = st->JoinJob("j", Member("s1"), t0);
  EXPECT_EQ(join.status().code(), ErrorCode::kCorruptData) << join.status().ToString();
  EXPECT_NE(join.status().message().find(job_key), std::string::npos) << join.status().ToString();
  EXPECT_EQ(redis_->Command({"HEXISTS", job_key, "r:s1"}), "0") << "a refused Join added the member";
  EXPECT_EQ(st->LeaveJob("j", "s0", t0).code(), ErrorCode::kCorruptData);
  EXPECT_EQ(redis_->Command({"HEXISTS", job_key, "r:s0"}), "1") << "a refused Leave dropped the member";
  // An expired member with a corrupt epoch: GetJob and the reaper drop nobody.
  EXPECT_EQ(st->GetJob("j", t0 + 3'600'000).status().code(), ErrorCode::kCorruptData);
  EXPECT_TRUE(st->Reap(t0 + 3'600'000).ok());
  EXPECT_EQ(redis_->Command({"HGET", job_key, "e"}), "one");
  EXPECT_EQ(redis_->Command({"HEXISTS", job_key, "r:s0"}), "1") << "a failed expiry dropped the member";
  // Repaired, the same calls work.
  ASSERT_EQ(redis_->Command({"HSET", job_key, "e", "1"}), "0");
  EXPECT_TRUE(st->JoinJob("j", Member("s1"), t0).ok());
  EXPECT_TRUE(st->LeaveJob("j", "s0", t0).ok());
}

// A counter (kvgen, a job's epoch) is checked to hold what Redis's INCR/HINCRBY accept
// (string2ll: no leading zero, no "-0", at most 19 digits within int64) and can bump: Redis
// refuses "007" or 20 digits only when the increment runs, after the script's earlier writes
// (found by review: a Put stored its value and then failed kInternal; a Join wrote
// its member; a Reap stopped at such a job and expired nobody in the jobs after it).
TEST_F(RedisStateTest, ACounterRedisCannotIncrementIsCorruptBeforeAnythingIsWritten) {
  auto st = Connect();
  ASSERT_TRUE(st);
  const std::int64_t t0 = WallMs();
  for (const char* gen : {"007", "-0", "+1", " 1", "12345678901234567890", "9223372036854775807", "-"}) {
    ASSERT_EQ(redis_->Command({"SET", "shardwire:v1:kvgen", gen}), "OK");
    const Status put = st->Put("k", BytesOf("v"));
    EXPECT_EQ(put.code(), ErrorCode::kCorruptData) << gen << ": " << put.ToString();
    EXPECT_NE(put.message().find("shardwire:v1:kvgen"), std::string::npos) << put.ToString();
    EXPECT_EQ(redis_->Command({"EXISTS", "shardwire:v1:kv:k"}), "0") << gen << ": a refused Put stored its value";
    EXPECT_EQ(st->Add("n", 2).status().code(), ErrorCode::kCorruptData) << gen;
    EXPECT_EQ(redis_->Command({"EXISTS", "shardwire:v1:kv:n"}), "0") << gen << ": a refused Add changed its counter";
    EXPECT_EQ(redis_->Command({"GET", "shardwire:v1:kvgen"}), gen);
  }
  // Every value Redis can increment still works, the extremes included.
  for (const char* gen : {"0", "-9223372036854775808", "-12", "8999999999999999999"}) {
    ASSERT_EQ(redis_->Command({"SET", "shardwire:v1:kvgen", gen}), "OK");
    EXPECT_TRUE(st->Put("k", BytesOf("v")).ok()) << gen;
  }
  ASSERT_EQ(redis_->Command({"DEL", "shardwire:v1:kv:k"}), "1");

  // A job whose epoch is "01": Join and Leave refuse with nothing written.
  ASSERT_TRUE(st->JoinJob("j", Member("s0"), t0).ok());
  const std::string job_key = "shardwire:v1:job:6a";  // hex("j")
  ASSERT_EQ(redis_->Command({"HSET", job_key, "e", "01"}), "0");
  auto join = st->JoinJob("j", Member("s1"), t0);
  EXPECT_EQ(join.status().code(), ErrorCode::kCorruptData) << join.status().ToString();
  EXPECT_NE(join.status().message().find(job_key), std::string::npos) << join.status().ToString();
  EXPECT_EQ(redis_->Command({"EVAL", "return #redis.call('HKEYS', KEYS[1])", "1", job_key}), "5")
      << "a refused Join wrote member fields";
  EXPECT_EQ(st->LeaveJob("j", "s0", t0).code(), ErrorCode::kCorruptData);
  EXPECT_EQ(redis_->Command({"HEXISTS", job_key, "r:s0"}), "1") << "a refused Leave dropped the member";
  // The reaper skips that job (its expired member stays) and still expires the others'.
  ASSERT_TRUE(st->JoinJob("other", Member("s2"), t0).ok());
  auto reap = st->Reap(t0 + 3'600'000);
  ASSERT_TRUE(reap.ok()) << reap.status().ToString();
  EXPECT_EQ(reap->members_expired, 1);
  EXPECT_EQ(redis_->Command({"HEXISTS", job_key, "r:s0"}), "1") << "the reaper dropped a member of a corrupt job";
  EXPECT_EQ(redis_->Command({"HGET", job_key, "e"}), "01");
  // Repaired, the same calls work.
  ASSERT_EQ(redis_->Command({"HSET", job_key, "e", "1"}), "0");
  EXPECT_TRUE(st->JoinJob("j", Member("s1"), t0).ok());
  EXPECT_TRUE(st->LeaveJob("j", "s0", t0).ok());
}

// A Join checks every member's heartbeat field before it drops the joining member's expired
// entry (found by review: it dropped that entry and bumped the epoch, then failed
// on another member's corrupt heartbeat).
TEST_F(RedisStateTest, AJoinThatMeetsACorruptMemberChangesNothing) {
  auto st = Connect();  // members expire after 5 s
  ASSERT_TRUE(st);
  const std::int64_t t0 = WallMs();
  ASSERT_TRUE(st->JoinJob("j", Member("a"), t0).ok());
  ASSERT_TRUE(st->JoinJob("j", Member("b"), t0 + 4'000).ok());
  const std::string job_key = "shardwire:v1:job:6a";  // hex("j")
  ASSERT_EQ(redis_->Command({"HSET", job_key, "h:b", "soon"}), "0");
  // The job hash as text: its fields sorted, "field=value" one per line.
  const auto dump = [&] {
    return redis_->Command({"EVAL",
                            "local t, o = redis.call('HGETALL', KEYS[1]), {} "
                            "for i = 1, #t, 2 do o[#o + 1] = t[i] .. '=' .. t[i + 1] end "
                            "table.sort(o) return table.concat(o, '\\n')",
                            "1", job_key});
  };
  const std::string before = dump();
  // At t0 + 6 s member a has expired; b's heartbeat field is corrupt.
  auto join = st->JoinJob("j", Member("a"), t0 + 6'000);
  EXPECT_EQ(join.status().code(), ErrorCode::kCorruptData) << join.status().ToString();
  EXPECT_NE(join.status().message().find("h:b"), std::string::npos) << join.status().ToString();
  EXPECT_EQ(dump(), before) << "a refused Join changed the job";
  EXPECT_EQ(redis_->Command({"HGET", job_key, "e"}), "2");
  // Repaired: a's expired entry is replaced, the epoch counts its expiry and its join.
  ASSERT_EQ(redis_->Command({"HSET", job_key, "h:b", std::to_string(t0 + 4'000)}), "0");
  auto rejoin = st->JoinJob("j", Member("a"), t0 + 6'000);
  ASSERT_TRUE(rejoin.ok()) << rejoin.status().ToString();
  EXPECT_EQ(rejoin->membership_epoch, 4u);
  EXPECT_EQ(rejoin->members.size(), 2u);
  // A live member joining again is refused and nothing changes.
  const std::string live = dump();
  EXPECT_EQ(st->JoinJob("j", Member("b"), t0 + 6'000).status().code(), ErrorCode::kAlreadyExists);
  EXPECT_EQ(dump(), live);
}

// A Redis that refuses writes without running them (a replica after a failover: READONLY;
// maxmemory reached: OOM) is kUnavailable, which clients retry, not kInternal ("a bug").
TEST_F(RedisStateTest, ARedisThatRefusesWritesIsUnavailable) {
  auto st = Connect();
  ASSERT_TRUE(st);
  ASSERT_TRUE(st->Put("k", BytesOf("v")).ok());
  ASSERT_EQ(redis_->Command({"REPLICAOF", "127.0.0.1", "1"}), "OK");  // no master there
  const Status readonly = st->Put("k", BytesOf("w"));
  ASSERT_EQ(redis_->Command({"REPLICAOF", "NO", "ONE"}), "OK");
  EXPECT_EQ(readonly.code(), ErrorCode::kUnavailable) << readonly.ToString();
  EXPECT_NE(readonly.message().find("READONLY"), std::string::npos) << readonly.ToString();
  ASSERT_EQ(redis_->Command({"CONFIG", "SET", "maxmemory", "1"}), "OK");
  const Status oom = st->Put("k", BytesOf("w"));
  ASSERT_EQ(redis_->Command({"CONFIG", "SET", "maxmemory", "0"}), "OK");
  EXPECT_EQ(oom.code(), ErrorCode::kUnavailable) << oom.ToString();
  EXPECT_EQ(**st->Get("k"), BytesOf("v")) << "a refused write changed the value";
  EXPECT_TRUE(st->Put("k", BytesOf("w")).ok());
  EXPECT_EQ(**st->Get("k"), BytesOf("w"));
  // An Add's first write is its INCRBY, under pcall: Redis's refusal is not the counter's fault
  // (it was relabelled kInvalidArgument, "holds a non-counter", which clients do not retry).
  ASSERT_EQ(st->Add("c", 1).value(), 1);
  ASSERT_EQ(redis_->Command({"REPLICAOF", "127.0.0.1", "1"}), "OK");
  const auto add_readonly = st->Add("c", 1);
  ASSERT_EQ(redis_->Command({"REPLICAOF", "NO", "ONE"}), "OK");
  EXPECT_EQ(add_readonly.status().code(), ErrorCode::kUnavailable) << add_readonly.status().ToString();
  EXPECT_NE(add_readonly.status().message().find("READONLY"), std::string::npos) << add_readonly.status().ToString();
  ASSERT_EQ(redis_->Command({"CONFIG", "SET", "maxmemory", "1"}), "OK");
  const auto add_oom = st->Add("c", 1);
  ASSERT_EQ(redis_->Command({"CONFIG", "SET", "maxmemory", "0"}), "OK");
  EXPECT_EQ(add_oom.status().code(), ErrorCode::kUnavailable) << add_oom.status().ToString();
  EXPECT_EQ(st->Add("c", 1).value(), 2) << "a refused Add changed the counter";
  // A value that is not a counter is still the caller's error.
  ASSERT_TRUE(st->Put("text", BytesOf("abc")).ok());
  EXPECT_EQ(st->Add("text", 1).status().code(), ErrorCode::kInvalidArgument);
}

// A record that Redis expired by its TTL (its process died; no Deregister, no script ran)
// leaves its id in its identity's index; the same proposed id registered again under another
// identity must not be listed under the first (the in-memory state filters by identity).
TEST_F(RedisStateTest, AnIdRegisteredAgainUnderAnotherIdentityIsListedOnlyUnderIt) {
  auto st = Connect();
  ASSERT_TRUE(st);
  const std::int64_t t0 = WallMs();
  SourceRecord a = Source("model-a", "i", 0, 1);
  a.source_id = "src-00000000000000ab";
  ASSERT_TRUE(st->RegisterSource(a, t0).ok());
  SourceRecord other_a = Source("model-a", "j", 0, 1);  // keeps model-a's index alive
  ASSERT_TRUE(st->RegisterSource(other_a, t0).ok());
  ASSERT_EQ(redis_->Command({"DEL", "shardwire:v1:src:" + a.source_id}), "1");  // as its TTL would
  SourceRecord b = Source("model-b", "i", 0, 1);
  b.source_id = a.source_id;
  ASSERT_TRUE(st->RegisterSource(b, t0 + 1).ok());
  const auto listed_a = st->ListSources("model-a", std::nullopt, t0 + 2).value();
  ASSERT_EQ(listed_a.size(), 1u) << "a source of model-b listed under model-a";
  EXPECT_EQ(listed_a[0].instance_id, "j");
  const auto listed_b = st->ListSources("model-b", std::nullopt, t0 + 2).value();
  ASSERT_EQ(listed_b.size(), 1u);
  EXPECT_EQ(listed_b[0].source_id, a.source_id);
  EXPECT_EQ(st->CountSources(t0 + 2).value().ready, 2u);
}

// A Redis that answers but is not ready (here BUSY: a script runs past busy-reply-threshold;
// after a restart it is LOADING while it replays its append-only file) is kUnavailable for
// every call, which clients retry, never kCorruptData. Found by scripts/fault_injection.py
// (redis-restart): KvGeneration read the LOADING error reply as "not a counter".
TEST_F(RedisStateTest, ARedisThatIsNotReadyIsUnavailableNotCorrupt) {
  auto st = Connect();
  ASSERT_TRUE(st);
  const std::int64_t t0 = WallMs();
  ASSERT_TRUE(st->Put("k", BytesOf("v")).ok());
  ASSERT_EQ(redis_->Command({"CONFIG", "SET", "busy-reply-threshold", "50"}), "OK");
  // A read-only script that spins for up to 60 s (SCRIPT KILL ends it below).
  std::thread busy([&] {
    redis_->Command({"EVAL",
                     "local t = tonumber(redis.call('TIME')[1]) "
                     "while tonumber(redis.call('TIME')[1]) < t + 60 do end return 1",
                     "0"});
  });
  bool is_busy = false;
  for (int i = 0; i < 400 && !is_busy; ++i) {  // up to 20 s for the script to start
    is_busy = redis_->Command({"PING"}).rfind("ERR BUSY", 0) == 0;
    if (!is_busy) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (is_busy) {
    auto gen = st->KvGeneration();
    EXPECT_EQ(gen.status().code(), ErrorCode::kUnavailable) << gen.status().ToString();
    auto get = st->Get("k");
    EXPECT_EQ(get.status().code(), ErrorCode::kUnavailable) << get.status().ToString();
    auto list = st->ListSources("m", std::nullopt, t0);
    EXPECT_EQ(list.status().code(), ErrorCode::kUnavailable) << list.status().ToString();
  }
  for (int i = 0; i < 100 && redis_->Command({"SCRIPT", "KILL"}).rfind("ERR NOTBUSY", 0) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  busy.join();
  ASSERT_TRUE(is_busy) << "the script never made Redis BUSY";
  // Ready again: the same state object reads the real values.
  EXPECT_GE(*st->KvGeneration(), 1u);
  EXPECT_EQ(**st->Get("k"), BytesOf("v"));
}

TEST_F(RedisStateTest, RedisDownIsUnavailableWithinTheBoundThenRecovers) {
  auto st = Connect(Policy(), 1.0);
  ASSERT_TRUE(st);
  const std::int64_t t0 = WallMs();
  ASSERT_TRUE(st->RegisterSource(Source("m", "i", 0, 1), t0).ok());
  redis_->Kill();
  for (int call = 0; call < 2; ++call) {  // a broken pooled connection, then a refused reconnect
    auto start = std::chrono::steady_clock::now();
    auto r = st->ListSources("m", std::nullopt, t0);
    double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(r.status().code(), ErrorCode::kUnavailable) << r.status().ToString();
    EXPECT_NE(r.status().message().find(redis_->url()), std::string::npos) << r.status().message();
    EXPECT_LT(took, 30.0) << "not bounded";  // a hang guard, not a speed check
    EXPECT_EQ(st->Add("c", 1).status().code(), ErrorCode::kUnavailable);
  }
  auto fresh = ConnectRedisCoordinatorState(redis_->url(), Policy(), 1.0);
  EXPECT_EQ(fresh.status().code(), ErrorCode::kUnavailable);
  ASSERT_TRUE(redis_->Restart());
  // Works again (no persistence: the data is gone, the state object is not).
  auto r = st->RegisterSource(Source("m", "i", 0, 1), t0);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(st->ListSources("m", std::nullopt, t0).value().size(), 1u);
  EXPECT_EQ(*st->Add("c", 2), 2);
}

// The pipelined (async) heartbeats with Redis gone: every callback comes, once,
// with kUnavailable naming Redis, within the bound; after Redis is back they work.
TEST_F(RedisStateTest, AsyncHeartbeatsWithRedisDownAreUnavailableThenRecover) {
  auto st = Connect(Policy(), 1.0);
  ASSERT_TRUE(st);
  const std::int64_t t0 = WallMs();
  auto a = st->RegisterSource(Source("m", "i", 0, 1), t0);
  ASSERT_TRUE(a.ok());
  Status warm;
  Completions first;
  st->HeartbeatSourceAsync(a->source_id, t0 + 1, first.Expect(&warm));  // opens the pipeline's connection
  ASSERT_TRUE(first.Wait());
  ASSERT_TRUE(warm.ok()) << warm.ToString();
  redis_->Kill();
  Completions done;
  std::vector<Status> results(20);
  const auto start = std::chrono::steady_clock::now();
  for (auto& r : results) st->HeartbeatSourceAsync(a->source_id, t0 + 2, done.Expect(&r));
  int completed = 0;
  ASSERT_TRUE(done.Wait(&completed)) << completed << " of " << results.size() << " callbacks";
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 30.0)
      << "not bounded";  // a hang guard, not a speed check
  for (const auto& r : results) {
    EXPECT_EQ(r.code(), ErrorCode::kUnavailable) << r.ToString();
    EXPECT_NE(r.message().find(redis_->url()), std::string::npos) << r.message();
  }
  ASSERT_TRUE(redis_->Restart());
  auto b = st->RegisterSource(Source("m", "i", 1, 2), t0);  // no persistence: register again
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  Status again;
  Completions after;
  st->HeartbeatSourceAsync(b->source_id, t0 + 3, after.Expect(&again));
  ASSERT_TRUE(after.Wait());
  EXPECT_TRUE(again.ok()) << again.ToString();
  EXPECT_EQ(st->ListSources("m", std::nullopt, t0 + 3).value().at(0).last_heartbeat_unix_ms, t0 + 3);
}

TEST(RedisStateUrl, BadUrlsAndUnreachableServers) {
  EXPECT_EQ(ConnectRedisCoordinatorState("http://x:1", Policy(), 1).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(ConnectRedisCoordinatorState("redis://", Policy(), 1).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(ConnectRedisCoordinatorState("redis://h:99999", Policy(), 1).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(ConnectRedisCoordinatorState("redis://h:1/x", Policy(), 1).status().code(), ErrorCode::kInvalidArgument);
  const int port = testing_util::FreeLoopbackPort();
  const std::string url = "redis://127.0.0.1:" + std::to_string(port);
  auto r = ConnectRedisCoordinatorState(url, Policy(), 1);
  EXPECT_EQ(r.status().code(), ErrorCode::kUnavailable);
  EXPECT_NE(r.status().message().find(url), std::string::npos) << r.status().message();
}

class RedisAofStateTest : public RedisStateTest {
  bool NeedsAof() const override { return true; }
};

// Redis itself restarted with its data (AOF): the records survive and the
// scripts, gone from Redis's cache, are loaded again (NOSCRIPT path).
TEST_F(RedisAofStateTest, SurvivesARedisRestartWithItsData) {
  auto st = Connect();
  ASSERT_TRUE(st);
  const std::string state_id = st->StateId();
  const std::int64_t t0 = WallMs();
  auto a = st->RegisterSource(Source("m", "i", 0, 1), t0);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(st->JoinJob("j", Member("s0"), t0).ok());
  ASSERT_TRUE(st->CommitVersion("j", "s0", 7, t0).ok());
  redis_->Kill();
  ASSERT_TRUE(redis_->Restart());
  ASSERT_TRUE(st->HeartbeatSource(a->source_id, t0 + 1).ok());
  // The data survived, so the state is the same one: same id, for this object and a new one.
  ASSERT_TRUE(st->RefreshStateId().ok());
  EXPECT_EQ(st->StateId(), state_id);
  auto again = Connect();
  ASSERT_TRUE(again);
  EXPECT_EQ(again->StateId(), state_id);
  auto l = st->ListSources("m", std::nullopt, t0 + 1);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  ASSERT_EQ(l->size(), 1u);
  EXPECT_EQ(l->at(0).last_heartbeat_unix_ms, t0 + 1);
  auto job = st->GetJob("j", t0 + 1);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->members.at(0).committed_version, 7u);
}

// The same for the pipelined heartbeats: the pipeline's connection breaks and
// the scripts are gone from Redis's cache (NOSCRIPT: loaded again, re-sent once).
TEST_F(RedisAofStateTest, AsyncHeartbeatsSurviveARedisRestartWithItsData) {
  auto st = Connect();
  ASSERT_TRUE(st);
  const std::int64_t t0 = WallMs();
  auto a = st->RegisterSource(Source("m", "i", 0, 1), t0);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE(st->JoinJob("j", Member("s0"), t0).ok());
  Status s1, m1;
  Completions before;
  st->HeartbeatSourceAsync(a->source_id, t0 + 1, before.Expect(&s1));
  st->HeartbeatMemberAsync("j", "s0", t0 + 1, before.Expect(&m1));
  ASSERT_TRUE(before.Wait());
  ASSERT_TRUE(s1.ok() && m1.ok()) << s1.ToString() << " " << m1.ToString();
  redis_->Kill();
  ASSERT_TRUE(redis_->Restart());
  Status s2, m2;
  Completions after;
  st->HeartbeatSourceAsync(a->source_id, t0 + 2, after.Expect(&s2));
  st->HeartbeatMemberAsync("j", "s0", t0 + 2, after.Expect(&m2));
  ASSERT_TRUE(after.Wait());
  EXPECT_TRUE(s2.ok()) << s2.ToString();
  EXPECT_TRUE(m2.ok()) << m2.ToString();
  EXPECT_EQ(st->ListSources("m", std::nullopt, t0 + 2).value().at(0).last_heartbeat_unix_ms, t0 + 2);
  EXPECT_EQ(st->GetJob("j", t0 + 2).value().members.at(0).last_heartbeat_unix_ms, t0 + 2);
}

}  // namespace
}  // namespace shardwire::control
