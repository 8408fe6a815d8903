// Behaviour every Rendezvous implementation must share, run against both
// InProcessRendezvous and CoordinatorClient over a real gRPC coordinator (typed tests).
#include "shardwire/rendezvous.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "control/test_util.h"
#include "shardwire/coordinator.h"

namespace shardwire {
namespace {

using testing_util::BytesOf;
using testing_util::Pattern;

// One store; NewHandle() returns another way in (the same object in process, a new
// client connection for TCP).
struct InProcessBackend {
  std::shared_ptr<InProcessRendezvous> store = std::make_shared<InProcessRendezvous>();
  std::shared_ptr<Rendezvous> NewHandle() { return store; }
};

struct CoordinatorBackend {
  std::unique_ptr<CoordinatorServer> server;
  CoordinatorBackend() {
    auto s = CoordinatorServer::Start({});
    if (!s.ok()) {
      ADD_FAILURE() << s.status().ToString();
      return;
    }
    server = std::move(s).value();
  }
  std::shared_ptr<Rendezvous> NewHandle() {
    if (!server) return nullptr;
    CoordinatorClientOptions o;
    o.address = server->address();
    auto c = CoordinatorClient::Connect(o);
    if (!c.ok()) {
      ADD_FAILURE() << c.status().ToString();
      return nullptr;
    }
    return std::shared_ptr<Rendezvous>(std::move(c).value());
  }
};

template <typename Backend>
class RendezvousTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rz_ = backend_.NewHandle();
    ASSERT_NE(rz_, nullptr);
  }
  Backend backend_;
  std::shared_ptr<Rendezvous> rz_;
};

struct BackendNames {
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, InProcessBackend> ? "InProcess" : "Coordinator";
  }
};

using Backends = ::testing::Types<InProcessBackend, CoordinatorBackend>;
TYPED_TEST_SUITE(RendezvousTest, Backends, BackendNames);

TYPED_TEST(RendezvousTest, PutGetRoundTripsBinaryValues) {
  Rendezvous& rz = *this->rz_;
  const std::vector<std::byte> empty;
  const std::vector<std::byte> zeros = {std::byte{0}, std::byte{1}, std::byte{0}, std::byte{0xFF}, std::byte{0}};
  const std::vector<std::byte> mib = Pattern(1 << 20);
  ASSERT_TRUE(rz.Put("empty", empty).ok());
  ASSERT_TRUE(rz.Put("zeros", zeros).ok());
  ASSERT_TRUE(rz.Put("one-mib", mib).ok());

  auto other = this->backend_.NewHandle();
  ASSERT_NE(other, nullptr);
  for (Rendezvous* r : {&rz, other.get()}) {
    auto e = r->Get("empty", 5);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    EXPECT_TRUE(e->empty());
    auto z = r->Get("zeros", 5);
    ASSERT_TRUE(z.ok()) << z.status().ToString();
    EXPECT_EQ(*z, zeros);
    auto m = r->Get("one-mib", 5);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    EXPECT_EQ(*m, mib);
  }

  // Put overwrites.
  ASSERT_TRUE(PutString(rz, "zeros", std::string("new\0value", 9)).ok());
  auto s = GetString(*other, "zeros", 5);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(*s, std::string("new\0value", 9));
}

TYPED_TEST(RendezvousTest, KeyAndValueLimitsAreEnforcedAtTheEdge) {
  Rendezvous& rz = *this->rz_;
  EXPECT_EQ(rz.Put("", BytesOf("x")).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(rz.Get("", 0).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(rz.Add("", 1).status().code(), ErrorCode::kInvalidArgument);

  const std::string max_key(kMaxRendezvousKeyBytes, 'k');
  const std::string long_key(kMaxRendezvousKeyBytes + 1, 'k');
  EXPECT_TRUE(PutString(rz, max_key, "v").ok());
  auto got = GetString(rz, max_key, 5);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, "v");
  EXPECT_EQ(PutString(rz, long_key, "v").code(), ErrorCode::kInvalidArgument);

  std::vector<std::byte> big = Pattern(kMaxRendezvousValueBytes, 7);
  ASSERT_TRUE(rz.Put("biggest", big).ok());
  auto back = rz.Get("biggest", 30);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(*back == big);
  big.push_back(std::byte{1});
  Status too_big = rz.Put("too-big", big);
  EXPECT_EQ(too_big.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(too_big.message().find("too-big"), std::string::npos) << too_big.message();

  EXPECT_EQ(rz.Get("biggest", -1).status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(rz.Get("biggest", std::nan("")).status().code(), ErrorCode::kInvalidArgument);
}

TYPED_TEST(RendezvousTest, GetBlocksUntilAnotherThreadPutsThroughTheSameHandle) {
  Rendezvous& rz = *this->rz_;
  std::atomic<bool> put_started{false};
  bool returned_after_put = false;
  Result<std::vector<std::byte>> got = InvalidArgument("not run");
  std::thread getter([&] {
    got = rz.Get("late-key", 60);
    returned_after_put = put_started.load();
  });
  // Give the getter time to block first (not a timing assertion: the test passes
  // either way if the implementation is right).
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  put_started = true;
  ASSERT_TRUE(PutString(rz, "late-key", "arrived").ok());
  getter.join();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, BytesOf("arrived"));
  EXPECT_TRUE(returned_after_put);
}

TYPED_TEST(RendezvousTest, GetBlocksUntilAnotherHandlePuts) {
  auto writer = this->backend_.NewHandle();
  ASSERT_NE(writer, nullptr);
  std::atomic<bool> put_started{false};
  bool returned_after_put = false;
  Result<std::string> got = InvalidArgument("not run");
  std::thread getter([&] {
    got = GetString(*this->rz_, "cross-handle", 60);
    returned_after_put = put_started.load();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  put_started = true;
  ASSERT_TRUE(PutString(*writer, "cross-handle", "hello").ok());
  getter.join();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, "hello");
  EXPECT_TRUE(returned_after_put);
}

TYPED_TEST(RendezvousTest, GetOfMissingKeyTimesOutNamingTheKeyAndHandleStaysUsable) {
  Rendezvous& rz = *this->rz_;
  auto missing = rz.Get("no/such/key", 0.2);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ErrorCode::kTimedOut);
  EXPECT_NE(missing.status().message().find("no/such/key"), std::string::npos) << missing.status().message();

  auto zero = rz.Get("no/such/key", 0);
  EXPECT_EQ(zero.status().code(), ErrorCode::kTimedOut);

  // A withdrawn wait leaves no stale answer behind: later calls see their own replies.
  ASSERT_TRUE(PutString(rz, "no/such/key", "now-here").ok());
  ASSERT_TRUE(PutString(rz, "other", "other-value").ok());
  auto a = GetString(rz, "other", 0);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(*a, "other-value");
  auto b = GetString(rz, "no/such/key", 0);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(*b, "now-here");
}

TYPED_TEST(RendezvousTest, AddIsAtomicAcrossThreads) {
  Rendezvous& rz = *this->rz_;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 1000;
  std::vector<std::vector<std::int64_t>> seen(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto v = rz.Add("counter", 1);
        if (!v.ok()) {
          ++failures;
          return;
        }
        seen[t].push_back(*v);
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  // Every increment returned a distinct new value: exactly 1..8000.
  std::vector<std::int64_t> all;
  for (auto& s : seen) all.insert(all.end(), s.begin(), s.end());
  std::sort(all.begin(), all.end());
  ASSERT_EQ(all.size(), static_cast<std::size_t>(kThreads * kPerThread));
  for (std::size_t i = 0; i < all.size(); ++i) ASSERT_EQ(all[i], static_cast<std::int64_t>(i + 1));

  auto now = rz.Add("counter", 0);
  ASSERT_TRUE(now.ok()) << now.status().ToString();
  EXPECT_EQ(*now, kThreads * kPerThread);
  auto text = GetString(rz, "counter", 0);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "8000");
  auto down = rz.Add("counter", -8010);
  ASSERT_TRUE(down.ok());
  EXPECT_EQ(*down, -10);
}

TYPED_TEST(RendezvousTest, AddRejectsNonCountersAndOverflow) {
  Rendezvous& rz = *this->rz_;
  ASSERT_TRUE(PutString(rz, "blob", "12abc").ok());
  auto bad = rz.Add("blob", 1);
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("blob"), std::string::npos);
  ASSERT_TRUE(rz.Put("empty", std::vector<std::byte>{}).ok());
  EXPECT_EQ(rz.Add("empty", 1).status().code(), ErrorCode::kInvalidArgument);

  auto big = rz.Add("big", std::numeric_limits<std::int64_t>::max());
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(rz.Add("big", 1).status().code(), ErrorCode::kInvalidArgument);
  auto same = rz.Add("big", 0);
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(*same, std::numeric_limits<std::int64_t>::max());
}

TYPED_TEST(RendezvousTest, AddWakesAGetWaitingForTheCounter) {
  Rendezvous& rz = *this->rz_;
  Result<std::string> got = InvalidArgument("not run");
  std::thread getter([&] { got = GetString(rz, "ready-count", 60); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(rz.Add("ready-count", 3).ok());
  getter.join();
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, "3");
}

TYPED_TEST(RendezvousTest, BarrierReleasesRanksOnlyAfterAllArrived) {
  constexpr int kWorld = 4;
  constexpr int kRounds = 3;
  std::vector<std::shared_ptr<Rendezvous>> handles;
  for (int r = 0; r < kWorld; ++r) {
    handles.push_back(this->backend_.NewHandle());
    ASSERT_NE(handles.back(), nullptr);
  }
  std::vector<std::string> errors(kWorld);
  std::vector<std::thread> ranks;
  for (int r = 0; r < kWorld; ++r) {
    ranks.emplace_back([&, r] {
      Rendezvous& rz = *handles[r];
      for (int round = 0; round < kRounds; ++round) {
        const std::string base = "round" + std::to_string(round) + "/rank";
        if (Status s = PutString(rz, base + std::to_string(r), "here"); !s.ok()) {
          errors[r] = s.ToString();
          return;
        }
        if (Status s = Barrier(rz, "round" + std::to_string(round), r, kWorld, 60); !s.ok()) {
          errors[r] = s.ToString();
          return;
        }
        // After the barrier every rank's record must already be there.
        for (int peer = 0; peer < kWorld; ++peer) {
          auto v = rz.Get(base + std::to_string(peer), 0);
          if (!v.ok()) {
            errors[r] = "after barrier: " + v.status().ToString();
            return;
          }
        }
      }
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < kWorld; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

TYPED_TEST(RendezvousTest, BarrierTimeoutSaysHowManyArrived) {
  Rendezvous& rz = *this->rz_;
  auto rank1_handle = this->backend_.NewHandle();
  ASSERT_NE(rank1_handle, nullptr);
  Status rank1 = InvalidArgument("not run");
  std::thread t([&] { rank1 = Barrier(*rank1_handle, "partial", 1, 3, 60); });
  // Wait (blocking, no polling) until rank 1 has registered its arrival.
  ASSERT_TRUE(rz.Get("shardwire/barrier/partial/arrived", 30).ok());

  Status rank0 = Barrier(rz, "partial", 0, 3, 0.2);
  EXPECT_EQ(rank0.code(), ErrorCode::kTimedOut);
  EXPECT_NE(rank0.message().find("2 of 3"), std::string::npos) << rank0.message();
  EXPECT_NE(rank0.message().find("partial"), std::string::npos) << rank0.message();

  // The last rank completes the barrier and releases the rank still waiting.
  Status rank2 = Barrier(rz, "partial", 2, 3, 30);
  EXPECT_TRUE(rank2.ok()) << rank2.ToString();
  t.join();
  EXPECT_TRUE(rank1.ok()) << rank1.ToString();
}

TYPED_TEST(RendezvousTest, BarrierRejectsBadArgumentsAndReusedNames) {
  Rendezvous& rz = *this->rz_;
  EXPECT_EQ(Barrier(rz, "b", 3, 3, 1).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(Barrier(rz, "b", -1, 3, 1).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(Barrier(rz, "b", 0, 0, 1).code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(Barrier(rz, "b", 0, 1, -1).code(), ErrorCode::kInvalidArgument);
  EXPECT_TRUE(Barrier(rz, "solo", 0, 1, 5).ok());
  EXPECT_EQ(Barrier(rz, "solo", 0, 1, 5).code(), ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace shardwire
