// The push honours the plan's schedule rounds (WeightSyncOptions::max_concurrency = K): at no
// moment do more than K trainer ranks write into one engine rank. Four FSDP trainer ranks push
// into two TP engine ranks, each with its own UCX agent (threads of this process), through a
// real in-process gRPC coordinator. Oracles: every engine byte against the fixture's
// (tensor, element, byte, version) function; the writers in flight per engine rank computed
// from the spans each trainer recorded (post -> completion seen, on the host's monotonic clock),
// which a push that posted every round at once would overlap.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shardwire/planner.h"
#include "shardwire/push_conversion.h"
#include "shardwire/weight_sync.h"
#include "fp8_push_fixture.h"
#include "weight_sync_fixture.h"

namespace shardwire {
namespace {

using namespace weight_sync_test;  // NOLINT: the fixture of these tests

// A few MB per push, so that one round's WRITEs take long enough to overlap the next
// round's if the push did not wait for it.
std::vector<TensorSpec> RoundTensors() {
  return {{"col", DType::kF32, {1024, 768}}, {"row", DType::kBF16, {768, 2048}}, {"norm", DType::kF32, {768}}};
}

// Most writers in flight at once into each engine rank, from every trainer's spans (a
// completion and a post at the same instant count as not overlapping).
std::map<int, int> MostConcurrentWriters(const std::vector<std::vector<RoundSpan>>& spans_by_trainer) {
  std::map<int, std::vector<std::pair<double, int>>> events;  // engine rank -> (time, +1 post / -1 completion)
  for (const auto& spans : spans_by_trainer) {
    for (const RoundSpan& s : spans) {
      events[s.engine_rank].push_back({s.posted_s, +1});
      events[s.engine_rank].push_back({s.completed_s, -1});
    }
  }
  std::map<int, int> most;
  for (auto& [engine, ev] : events) {
    std::sort(ev.begin(), ev.end());  // at equal times -1 sorts before +1
    int now = 0;
    for (const auto& [t, delta] : ev) most[engine] = std::max(most[engine], now += delta);
  }
  return most;
}

// `trainers` FSDP trainer ranks push into one TP=`tp` engine in rounds of K = `k` writers per
// engine rank, four versions; checked: no engine rank had more than K writers at once, and every
// engine rank holds every version byte for byte.
void PushInRounds(int k, const std::string& job, int trainers = 4, int tp = 2) {
  auto server = StartRendezvous();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto client = ConnectRendezvous(static_cast<std::uint16_t>((*server)->port()));
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  const Layout trainer = MakeFsdpLayout(RoundTensors(), trainers).value();
  const Layout engine = MakeTpLayout(RoundTensors(), {0, 1, -1}, tp, 1).value();
  const auto plan = PlanTransfer(trainer, engine, PlanOptions{.max_concurrency = k});
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  const bool four_into_two = trainers == 4 && tp == 2;
  // 4 writers per engine rank and 2 engine ranks per writer: K = 1 needs at least 4 rounds.
  if (four_into_two) {
    ASSERT_GE(plan->rounds(), k == 1 ? 4u : 2u);
  }

  WeightSyncOptions options{job, 30};
  options.max_concurrency = k;
  std::vector<std::unique_ptr<WeightSubscriber>> subs;
  std::vector<std::unique_ptr<WeightPublisher>> pubs;
  ASSERT_NO_FATAL_FAILURE(CreateAndConnect(**client, trainer, engine, options, subs, pubs));
  for (std::uint64_t v = 1; v <= 4; ++v) {
    for (int t = 0; t < trainers; ++t) Walk(trainer, t, pubs[t]->weights(), v, false);
    for (auto& sub : subs) ASSERT_TRUE(sub->BeginUpdate(v).ok());
    std::vector<Result<PushStats>> results(static_cast<std::size_t>(trainers), Internal("not run"));
    std::vector<std::thread> pushes;
    for (int t = 0; t < trainers; ++t) pushes.emplace_back([&, t] { results[t] = pubs[t]->Push(v); });
    for (auto& th : pushes) th.join();
    std::vector<std::vector<RoundSpan>> spans;
    std::uint32_t rounds = 0;
    for (int t = 0; t < trainers; ++t) {
      ASSERT_TRUE(results[t].ok()) << "trainer " << t << ": " << results[t].status().ToString();
      EXPECT_TRUE(results[t]->missed.empty());
      spans.push_back(results[t]->round_spans);
      rounds += results[t]->rounds;
      if (!four_into_two) continue;
      // Every (trainer, engine) pair of the plan wrote in some round of this push.
      std::set<int> written;
      for (const RoundSpan& s : results[t]->round_spans) written.insert(s.engine_rank);
      EXPECT_EQ(written, (std::set<int>{0, 1})) << "trainer " << t << " v" << v;
    }
    // K = 1: each trainer's three (source, destination group) pairs, {0}, {1} and the
    // replicated norm's {0, 1}, each in a round of its own.
    if (k == 1 && four_into_two) {
      EXPECT_EQ(rounds, 12u);
    }
    const auto most_writers = MostConcurrentWriters(spans);
    ASSERT_EQ(most_writers.size(), static_cast<std::size_t>(tp)) << "every engine rank is written in some round";
    for (const auto& [engine_rank, most] : most_writers) {
      EXPECT_LE(most, k) << "engine rank " << engine_rank << " had " << most << " writers at once in v" << v
                         << " (K = " << k << ")";
    }
    for (int e = 0; e < tp; ++e) {
      ASSERT_TRUE(subs[e]->WaitForUpdate(v).ok());
      EXPECT_EQ(Walk(engine, e, subs[e]->weights(), v, true), 0u) << "engine rank " << e << " v" << v;
    }
  }
}

TEST(WeightSyncRounds, AtMostOneWriterPerEngineRankWithKOne) { PushInRounds(1, "rounds-k1"); }

TEST(WeightSyncRounds, AtMostTwoWritersPerEngineRankWithKTwo) { PushInRounds(2, "rounds-k2"); }

// 2 FSDP trainer ranks into TP=4 with K = 3: trainer rank 0 writes engine ranks {0, 1, 2} in round
// 0, {3} in round 1 and all four in round 2, and two of its rounds depend on trainer rank 1's
// round 0 (through engine ranks 3 and 0). Trainer rank 1 sends that ROUND_DONE once: the rounds
// must wait for it once (waiting in both rounds failed every push after timeout_s).
TEST(WeightSyncRounds, TwoRoundsThatDependOnOneRoundOfAnotherTrainerWaitForItOnce) {
  PushInRounds(3, "rounds-k3-tp4", 2, 4);
}

// A converting push runs the same rounds: bf16 trainers (FSDP=3) into FP8 block-128 engines
// (TP=2, 2 replicas), some tensors moved unchanged (emb), the others quantised or cast. The two
// parts are scheduled as one (ScheduleJointly) and the converted bytes of a round are converted
// and sent within it, through the staging ring (WRITEs) or straight into mapped engine buffers.
void PushConvertedInRounds(int k, bool into_mapped, const std::string& job) {
  auto server = StartRendezvous();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto client = ConnectRendezvous(static_cast<std::uint16_t>((*server)->port()));
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  const Layout trainer = MakeFsdpLayout(TrainerBf16(), 3).value();
  const Layout engine = MakeTpLayout(EngineFp8(), {0, 0, 0, 1, 1, -1, -1, -1}, 2, 2).value();
  WeightSyncOptions options{job, 30};
  options.max_concurrency = k;
  options.convert_into_mapped = into_mapped;
  options.conversion.staging_bytes = 160 << 10;  // several staging rounds per push

  // The joint schedule: per round, no engine rank has more than K writers across both parts,
  // and both parts have moves in rounds after the first (they are interleaved, not one after
  // the other).
  const auto conversion =
      PushConversion::Create(trainer, engine, options.conversion, PlanOptions{.max_concurrency = k});
  ASSERT_TRUE(conversion.ok()) << conversion.status().ToString();
  std::map<std::pair<std::uint32_t, int>, std::set<std::uint32_t>> writers;  // (round, engine rank) -> trainer ranks
  for (const TransferPlan* plan : {&conversion->direct_plan(), &conversion->converted_plan()}) {
    for (const Bucket& b : plan->buckets()) {
      for (std::uint32_t d : plan->dst_groups()[b.dst_group]) writers[{b.round, static_cast<int>(d)}].insert(b.src_rank);
    }
  }
  for (const auto& [key, ranks] : writers) {
    EXPECT_LE(ranks.size(), static_cast<std::size_t>(k)) << "round " << key.first << ", engine rank " << key.second;
  }
  ASSERT_GE(conversion->converted_plan().rounds(), 2u);

  std::vector<std::unique_ptr<WeightSubscriber>> subs;
  std::vector<std::unique_ptr<WeightPublisher>> pubs;
  ASSERT_NO_FATAL_FAILURE(CreateAndConnect(**client, trainer, engine, options, subs, pubs));
  for (std::uint64_t v = 1; v <= 3; ++v) {
    for (int t = 0; t < 3; ++t) WriteTrainerBf16(trainer, t, v, pubs[t]->weights());
    for (auto& sub : subs) ASSERT_TRUE(sub->BeginUpdate(v).ok());
    std::vector<Result<PushStats>> results(3, Internal("not run"));
    std::vector<std::thread> pushes;
    for (int t = 0; t < 3; ++t) pushes.emplace_back([&, t] { results[t] = pubs[t]->Push(v); });
    for (auto& th : pushes) th.join();
    std::vector<std::vector<RoundSpan>> spans;
    for (int t = 0; t < 3; ++t) {
      ASSERT_TRUE(results[t].ok()) << "trainer " << t << ": " << results[t].status().ToString();
      EXPECT_TRUE(results[t]->missed.empty());
      EXPECT_GT(results[t]->converted_bytes, 0u);
      if (into_mapped) {
        EXPECT_EQ(results[t]->mapped_bytes, results[t]->converted_bytes) << "trainer " << t;
      } else {
        EXPECT_EQ(results[t]->mapped_bytes, 0u) << "trainer " << t;
        EXPECT_GT(results[t]->staging_peak_bytes, 0u) << "trainer " << t;
      }
      EXPECT_GE(results[t]->rounds, 2u) << "trainer " << t;
      spans.push_back(results[t]->round_spans);
    }
    const auto most_writers = MostConcurrentWriters(spans);
    ASSERT_EQ(most_writers.size(), static_cast<std::size_t>(engine.world_size()))
        << "every engine rank is written in some round";
    for (const auto& [engine_rank, most] : most_writers) {
      EXPECT_LE(most, k) << "engine rank " << engine_rank << " had " << most << " writers at once in v" << v
                         << " (K = " << k << ")";
    }
    for (int e = 0; e < engine.world_size(); ++e) {
      ASSERT_TRUE(subs[e]->WaitForUpdate(v).ok());
      EXPECT_EQ(CheckFp8Engine(engine, e, subs[e]->weights(), v), 0u) << "engine rank " << e << " v" << v;
    }
  }
}

TEST(WeightSyncRounds, ConvertingPushThroughStagingKeepsOneWriterPerEngineRankWithKOne) {
  PushConvertedInRounds(1, false, "rounds-fp8-staged");
}

TEST(WeightSyncRounds, ConvertingPushIntoMappedBuffersKeepsOneWriterPerEngineRankWithKOne) {
  PushConvertedInRounds(1, true, "rounds-fp8-mapped");
}

TEST(WeightSyncRounds, ConvertingPushWithKTwo) { PushConvertedInRounds(2, false, "rounds-fp8-k2"); }

TEST(WeightSyncRounds, PeersPlanningForAnotherKAreRefusedAtConnect) {
  auto server = StartRendezvous();
  ASSERT_TRUE(server.ok());
  auto client = ConnectRendezvous(static_cast<std::uint16_t>((*server)->port()));
  ASSERT_TRUE(client.ok());
  const Layout trainer = MakeFsdpLayout(RoundTensors(), 1).value();
  const Layout engine = MakeTpLayout(RoundTensors(), {0, 1, -1}, 1, 1).value();
  WeightSyncOptions engine_options{"k-mismatch", 5};
  engine_options.max_concurrency = 2;
  auto sub = WeightSubscriber::Create(**client, trainer, engine, 0, engine_options);
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  auto pub = WeightPublisher::Create(**client, trainer, engine, 0, {"k-mismatch", 5});
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  const Status st = (*pub)->Connect();
  EXPECT_EQ(st.code(), ErrorCode::kLayoutMismatch) << st.ToString();
  EXPECT_NE(st.message().find("K 2"), std::string::npos) << st.ToString();

  WeightSyncOptions zero{"k-zero", 5};
  zero.max_concurrency = 0;
  auto bad = WeightPublisher::Create(**client, trainer, engine, 0, zero);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument) << bad.status().ToString();
}

}  // namespace
}  // namespace shardwire
