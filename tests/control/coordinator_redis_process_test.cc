// Redis-backed coordinators as real processes: `shardwire serve --redis URL`
// over a real redis-server (tests/control/redis_fixture.h), clients over real
// gRPC.
//   - kill -9 of the coordinator and a restart on the same port while clients
//     register, heartbeat and add in threads: every acknowledged registration
//     and counter increment is there afterwards (nothing lost);
//   - two coordinators over one Redis serve one state: a client of A sees B's
//     writes (also a blocked Get woken by a Put through the other coordinator),
//     concurrent Adds through both sum exactly, job epochs and versions agree;
//   - two coordinators whose wall clocks disagree agree on leases (both read Redis's clock);
//   - a lease ends while no coordinator runs (Redis key TTL), and a restarted
//     coordinator derives STALE from the stored heartbeat time.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <regex>
#include <set>
#include <string>
#include <thread>

#include "control/redis_fixture.h"
#include "control/serve_process.h"
#include "control/test_util.h"
#include "shardwire/coordinator.h"

namespace shardwire {
namespace {

using testing_util::BytesOf;
using testing_util::RedisServer;

using Serve = testing_util::ServeProcess;

// Starts `shardwire serve --port <port> --redis <url> extra...` (testing_util::StartServe).
bool StartServe(Serve* p, int port, const std::string& redis_url, std::vector<std::string> extra,
                std::string* output) {
  extra.insert(extra.begin(), {"--redis", redis_url});
  return testing_util::StartServe(p, port, extra, output);
}

std::unique_ptr<CoordinatorClient> Client(const std::string& address) {
  CoordinatorClientOptions o;
  o.address = address;
  o.unavailable_timeout_s = 60;  // rides over a coordinator restart under a loaded machine
  auto c = CoordinatorClient::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(c).value() : nullptr;
}

SourceRecord Source(const std::string& instance, int rank) {
  SourceRecord r;
  r.model_identity = "model-x";
  r.instance_id = instance;
  r.rank = rank;
  r.world_size = 1000;
  r.layout = "tp=1";
  r.metadata = BytesOf(std::string("md\0", 3) + instance);
  return r;
}

class CoordinatorRedisProcess : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!RedisServer::Available()) GTEST_SKIP() << RedisServer::SkipReason();
    std::string error;
    redis_ = RedisServer::Start(&error);
    ASSERT_NE(redis_, nullptr) << error;
  }
  std::unique_ptr<RedisServer> redis_;
};

TEST_F(CoordinatorRedisProcess, KillNineAndRestartUnderLoadLosesNothingAcknowledged) {
  Serve first;
  std::string out;
  ASSERT_TRUE(StartServe(&first, 0, redis_->url(), {}, &out)) << out;
  const int port = first.port();

  constexpr int kThreads = 4;
  std::atomic<bool> stop{false};
  std::atomic<long> acked_registrations{0};
  std::array<std::atomic<long>, kThreads> acked_by_thread{};  // readable while the threads run
  std::vector<std::vector<std::string>> acked_ids(kThreads);
  std::vector<long> acked_adds(kThreads, 0), failed_adds(kThreads, 0), failed_other(kThreads, 0);
  std::atomic<long> state_lost{0};  // bound calls refused as "state gone": must stay 0 on Redis
  std::string joined_state;
  {
    auto probe = Client(first.address);
    ASSERT_TRUE(probe);
    joined_state = probe->state_id();
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto c = Client(first.address);
      if (!c) return;
      for (int i = 0; !stop.load(); ++i) {
        auto r = c->RegisterSource(Source("inst-" + std::to_string(t), i));
        if (r.ok()) {
          acked_ids[t].push_back(r->source_id);
          ++acked_by_thread[t];
          ++acked_registrations;
        } else {
          ++failed_other[t];
        }
        if (auto added = c->Add("acked-counter", 1); added.ok()) {
          ++acked_adds[t];
        } else {
          ++failed_adds[t];
          if (added.status().code() == ErrorCode::kFailedPrecondition) ++state_lost;
        }
        if (!acked_ids[t].empty() && !c->HeartbeatSource(acked_ids[t][i % acked_ids[t].size()]).ok()) {
          ++failed_other[t];
        }
      }
    });
  }
  // Waits (at most 60 s: a sanitizer build on a loaded host is slow) until `done` holds; no
  // fixed sleep decides whether load ran (a 700 ms sleep saw none once under TSan).
  auto wait_until = [](const std::function<bool()>& done) {
    for (int i = 0; i < 6000 && !done(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  };
  // Every thread has had a registration acknowledged (one starved thread, under TSan, once had
  // none when the total was reached), and the load as a whole ran a while.
  wait_until([&] {
    for (const auto& n : acked_by_thread)
      if (n.load() == 0) return false;
    return acked_registrations.load() >= 4 * kThreads;
  });
  const long before_kill = acked_registrations.load();
  first.Kill();  // SIGKILL in the middle of the load
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  Serve second;
  out.clear();
  ASSERT_TRUE(StartServe(&second, port, redis_->url(), {}, &out)) << out;
  wait_until([&] { return acked_registrations.load() >= before_kill + 4 * kThreads; });
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_GT(before_kill, 0) << "no load before the kill";
  EXPECT_GT(acked_registrations.load(), before_kill) << "the load did not continue through the restart";

  auto c = Client(second.address);
  ASSERT_TRUE(c);
  // The state lives in Redis, so the restarted coordinator serves the same one.
  EXPECT_EQ(c->state_id(), joined_state);
  EXPECT_EQ(state_lost.load(), 0) << "a coordinator restart on Redis must not look like a lost state";
  auto listed = c->ListSources("model-x", std::nullopt);
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  std::set<std::string> present;
  for (const auto& r : *listed) present.insert(r.source_id);
  long acked_total = 0, adds = 0, adds_failed = 0;
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_GT(acked_ids[t].size(), 0u) << "thread " << t << " registered nothing";
    for (const auto& id : acked_ids[t]) {
      EXPECT_EQ(present.count(id), 1u) << "acknowledged registration " << id << " was lost";
      EXPECT_TRUE(c->HeartbeatSource(id).ok()) << id;
    }
    acked_total += static_cast<long>(acked_ids[t].size());
    adds += acked_adds[t];
    adds_failed += failed_adds[t];
  }
  EXPECT_GE(static_cast<long>(present.size()), acked_total);
  auto counter = c->Add("acked-counter", 0);
  ASSERT_TRUE(counter.ok());
  // Every acknowledged increment is there; at most the unacknowledged ones
  // (and retries of a call whose reply was lost with the coordinator) on top.
  EXPECT_GE(*counter, adds) << "acknowledged increments were lost";
  EXPECT_LE(*counter, adds + adds_failed + kThreads);
}

TEST_F(CoordinatorRedisProcess, TwoCoordinatorsOnOneRedisServeOneState) {
  Serve a_proc, b_proc;
  std::string out;
  ASSERT_TRUE(StartServe(&a_proc, 0, redis_->url(), {}, &out)) << out;
  out.clear();
  ASSERT_TRUE(StartServe(&b_proc, 0, redis_->url(), {}, &out)) << out;
  auto a = Client(a_proc.address);
  auto b = Client(b_proc.address);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->state_id(), b->state_id()) << "one Redis, one state";

  // A client of A sees B's writes, and the other way round.
  auto reg = b->RegisterSource(Source("inst-b", 0));
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  auto seen = a->ListSources("model-x", SourceState::kReady);
  ASSERT_TRUE(seen.ok());
  ASSERT_EQ(seen->size(), 1u);
  EXPECT_EQ(seen->at(0).source_id, reg->source_id);
  EXPECT_EQ(seen->at(0).metadata, Source("inst-b", 0).metadata);
  ASSERT_TRUE(a->MarkSourceStale(reg->source_id, "unreachable from a loader", /*hold=*/true).ok());
  EXPECT_EQ(b->ListSources("model-x", SourceState::kStale)->size(), 1u);
  // The mark's hold (serve's default 30 s) is in Redis: a heartbeat through B keeps it STALE.
  ASSERT_TRUE(b->HeartbeatSource(reg->source_id).ok());
  auto held = a->ListSources("model-x", SourceState::kStale);
  ASSERT_TRUE(held.ok());
  ASSERT_EQ(held->size(), 1u);
  EXPECT_EQ(held->at(0).stale_reason, "unreachable from a loader");
  ASSERT_TRUE(b->DeregisterSource(reg->source_id).ok());
  EXPECT_EQ(a->DeregisterSource(reg->source_id).code(), ErrorCode::kNotFound);

  // A Get blocked in A is woken by a Put through B.
  Result<std::vector<std::byte>> waited = Internal("not run");
  std::thread waiter([&] { waited = a->Get("late-key", 20); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_TRUE(b->Put("late-key", BytesOf(std::string("v\0w", 3))).ok());
  waiter.join();
  ASSERT_TRUE(waited.ok()) << waited.status().ToString();
  EXPECT_EQ(*waited, BytesOf(std::string("v\0w", 3)));

  // Concurrent Adds through both coordinators sum exactly.
  constexpr int kThreads = 4, kAdds = 150;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      CoordinatorClient& via = (t % 2 == 0) ? *a : *b;
      for (int i = 0; i < kAdds; ++i) {
        if (!via.Add("sum", 1).ok()) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  EXPECT_EQ(*a->Add("sum", 0), kThreads * kAdds);
  EXPECT_EQ(*b->Add("sum", 0), kThreads * kAdds);

  // Jobs: members joined through either coordinator, one epoch, versions agree.
  JobMember x;
  x.member_id = "engine-0/rank-0";
  JobMember y = x;
  y.member_id = "engine-1/rank-0";
  ASSERT_TRUE(a->JoinJob("job", x).ok());
  ASSERT_TRUE(b->JoinJob("job", y).ok());
  EXPECT_EQ(b->JoinJob("job", x).status().code(), ErrorCode::kAlreadyExists);
  auto ja = a->GetJob("job");
  auto jb = b->GetJob("job");
  ASSERT_TRUE(ja.ok() && jb.ok());
  EXPECT_EQ(ja->members.size(), 2u);
  EXPECT_EQ(ja->membership_epoch, 2u);
  EXPECT_EQ(jb->membership_epoch, ja->membership_epoch);
  ASSERT_TRUE(b->CommitVersion("job", x.member_id, 5).ok());
  EXPECT_EQ(a->CommitVersion("job", x.member_id, 3).code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(a->GetJob("job")->members.at(0).committed_version, 5u);
}

// libfaketime (Debian libfaketime, scripts/install-deps.sh): preloaded, it moves a process's wall
// clock; the MT variant is the one for threaded programs (its README). Empty when not installed.
std::string LibFaketime() {
  for (const char* p : {"/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"}) {
    if (::access(p, R_OK) == 0) return p;
  }
  return {};
}

// The environment that runs a process `seconds` ahead of this machine's wall clock. (Redis itself
// cannot be run so: libfaketime and Debian's jemalloc-linked redis-server recurse at start.)
std::vector<std::string> ClockAheadEnv(const std::string& lib, int seconds) {
  std::string asan = "verify_asan_link_order=0";  // the ASan stage: libfaketime is preloaded first
  if (const char* a = std::getenv("ASAN_OPTIONS"); a != nullptr && *a != '\0') asan = std::string(a) + ":" + asan;
  return {"LD_PRELOAD=" + lib, "FAKETIME=+" + std::to_string(seconds), "FAKETIME_DONT_FAKE_MONOTONIC=1",
          "ASAN_OPTIONS=" + asan};
}

// Unix seconds of the first JSON log line in `output` (`shardwire --log-format json`: "time":
// "YYYY-MM-DDTHH:MM:SS.ffffffZ"); -1 when there is none.
long long FirstLogLineUnixS(const std::string& output) {
  std::smatch m;
  if (!std::regex_search(output, m, std::regex(R"re("time":"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2}))re")))
    return -1;
  std::tm t{};
  t.tm_year = std::stoi(m[1]) - 1900;
  t.tm_mon = std::stoi(m[2]) - 1;
  t.tm_mday = std::stoi(m[3]);
  t.tm_hour = std::stoi(m[4]);
  t.tm_min = std::stoi(m[5]);
  t.tm_sec = std::stoi(m[6]);
  return static_cast<long long>(::timegm(&t));
}

// Two coordinators on one Redis whose own wall clocks disagree by 30 s, three times the STALE
// bound: both take `now` from Redis's clock (RedisClock), so a source registered through one is
// READY through the other, and the other's reaper leaves it so. Before, the coordinator 30 s
// ahead saw every heartbeat of the first as 30 s old and listed the source STALE.
TEST_F(CoordinatorRedisProcess, CoordinatorsWhoseClocksDisagreeAgreeOnLeases) {
  const std::string lib = LibFaketime();
  if (lib.empty()) GTEST_SKIP() << "libfaketime is not installed (Debian package libfaketime; scripts/install-deps.sh)";
  constexpr int kAheadS = 30;
  const std::vector<std::string> ahead = ClockAheadEnv(lib, kAheadS);
  const auto real_now = static_cast<long long>(std::time(nullptr));

  const std::vector<std::string> times = {"--stale-after", "10", "--delete-after", "600"};
  Serve on_time, late;
  std::string out;
  ASSERT_TRUE(StartServe(&on_time, 0, redis_->url(), times, &out)) << out;
  out.clear();
  std::vector<std::string> extra = times;
  extra.insert(extra.begin(), {"--redis", redis_->url()});
  ASSERT_TRUE(testing_util::StartServe(&late, 0, extra, &out, ahead, {"--log-format", "json", "-v"})) << out;
  // The late coordinator's own log says its clock runs ahead (else this test would test nothing).
  ASSERT_GE(FirstLogLineUnixS(out), real_now + kAheadS - 5) << "libfaketime did not move serve's clock: " << out;
  auto a = Client(on_time.address);
  auto b = Client(late.address);
  ASSERT_TRUE(a && b);

  auto reg = a->RegisterSource(Source("inst", 0));
  ASSERT_TRUE(reg.ok()) << reg.status().ToString();
  auto seen = b->ListSources("model-x", std::nullopt);
  ASSERT_TRUE(seen.ok()) << seen.status().ToString();
  ASSERT_EQ(seen->size(), 1u);
  EXPECT_EQ(seen->at(0).state, SourceState::kReady) << "the coordinator ahead: " << seen->at(0).stale_reason;

  // A heartbeat through the coordinator ahead, then a pass of its reaper (every second): READY on
  // both, and the heartbeat's reply says so.
  auto hb = b->HeartbeatSource(reg->source_id);
  ASSERT_TRUE(hb.ok()) << hb.status().ToString();
  EXPECT_EQ(hb->state, SourceState::kReady);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  for (CoordinatorClient* c : {a.get(), b.get()}) {
    auto l = c->ListSources("model-x", std::nullopt);
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    ASSERT_EQ(l->size(), 1u);
    EXPECT_EQ(l->at(0).state, SourceState::kReady) << l->at(0).stale_reason;
  }
  auto again = a->HeartbeatSource(reg->source_id);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->state, SourceState::kReady);
  EXPECT_TRUE(again->stale_reason.empty()) << again->stale_reason;
}

// A source whose coordinator went away turns STALE by its stored heartbeat time: the next
// coordinator derives it, nobody wrote it. (delete-after 600 s so that a slow start of the
// second coordinator cannot skip the check; the deletion is the next test.)
TEST_F(CoordinatorRedisProcess, ASourceTurnsStaleWhileNoCoordinatorRuns) {
  const std::vector<std::string> times = {"--stale-after", "1", "--delete-after", "600"};
  Serve first;
  std::string out;
  ASSERT_TRUE(StartServe(&first, 0, redis_->url(), times, &out)) << out;
  {
    auto c = Client(first.address);
    ASSERT_TRUE(c);
    ASSERT_TRUE(c->RegisterSource(Source("inst", 0)).ok());
  }
  const auto registered = std::chrono::steady_clock::now();
  first.Kill();
  std::this_thread::sleep_until(registered + std::chrono::milliseconds(1500));
  Serve second;
  out.clear();
  ASSERT_TRUE(StartServe(&second, 0, redis_->url(), times, &out)) << out;
  auto c = Client(second.address);
  ASSERT_TRUE(c);
  auto l = c->ListSources("model-x", std::nullopt);
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  ASSERT_EQ(l->size(), 1u);
  EXPECT_EQ(l->at(0).state, SourceState::kStale);
  EXPECT_NE(l->at(0).stale_reason.find("no heartbeat"), std::string::npos) << l->at(0).stale_reason;
  EXPECT_TRUE(c->ListSources("model-x", SourceState::kReady)->empty());
}

TEST_F(CoordinatorRedisProcess, LeasesEndWhileNoCoordinatorRuns) {
  const std::vector<std::string> times = {"--stale-after", "1", "--delete-after", "5"};
  Serve first;
  std::string out;
  ASSERT_TRUE(StartServe(&first, 0, redis_->url(), times, &out)) << out;
  std::string id;
  {
    auto c = Client(first.address);
    ASSERT_TRUE(c);
    auto r = c->RegisterSource(Source("inst", 0));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    id = r->source_id;
  }
  const auto registered = std::chrono::steady_clock::now();
  first.Kill();

  // Past delete_after with no coordinator: Redis itself removed the record.
  std::this_thread::sleep_until(registered + std::chrono::milliseconds(5500));
  EXPECT_EQ(redis_->Command({"EXISTS", "shardwire:v1:src:" + id}), "0") << "the lease did not end in Redis";
  Serve third;
  out.clear();
  ASSERT_TRUE(StartServe(&third, 0, redis_->url(), times, &out)) << out;
  auto c = Client(third.address);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->ListSources("", std::nullopt)->empty());
  EXPECT_EQ(c->HeartbeatSource(id).status().code(), ErrorCode::kNotFound);
}

}  // namespace
}  // namespace shardwire
