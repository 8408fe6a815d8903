// Engine-to-engine relays (WeightSyncOptions::relay_broadcasts): two FSDP trainer ranks push into
// three engine replicas (tp=1, dp=3), each with its own UCX agent (threads of this process),
// through a real in-process gRPC coordinator. The trainers write only the relay roots; every
// other replica gets the version forwarded by its parent. Oracles: every engine byte against the
// fixture's (tensor, element, byte, version) function, with the trainers' per-version digests
// checked end to end; the bytes each trainer wrote (one replica's worth).
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shardwire/weight_sync.h"
#include "weight_sync_fixture.h"

namespace shardwire {
namespace {

using namespace weight_sync_test;  // NOLINT: the fixture of these tests

struct Job {
  std::unique_ptr<CoordinatorServer> server;
  std::unique_ptr<CoordinatorClient> client;
  Layout trainer = MakeFsdpLayout(Tensors(), 2).value();
  Layout engine = MakeTpLayout(Tensors(), {0, 0, 1, -1}, 1, 3).value();
  std::vector<std::unique_ptr<WeightPublisher>> pubs;
  std::vector<std::unique_ptr<WeightSubscriber>> subs;
};

// Set by a test on the thread whose WaitForUpdate it interrupts (the hook every process of a
// job gets; the other threads never see it set).
thread_local bool interrupt_this_thread = false;

// Two trainer ranks, three engine replicas, connected, with relays along a K-ary tree.
// `interruptible`: every process gets the hook that interrupt_this_thread sets;
// `engine_options`: changes an engine rank's own options.
void StartJob(Job& job, const std::string& name, int k, bool interruptible = false,
              const std::function<void(int, WeightSyncOptions&)>& engine_options = {}) {
  auto server = StartRendezvous();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  job.server = std::move(*server);
  auto client = ConnectRendezvous(static_cast<std::uint16_t>(job.server->port()));
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  job.client = std::move(*client);
  WeightSyncOptions options{name, 20};
  options.relay_broadcasts = true;
  options.max_concurrency = k;
  options.verify_digests = true;
  // The stalled-replica test waits this long for its READY, once; every healthy READY, transfer
  // and forward must come within it, also under TSan on a loaded CI machine.
  options.engine_timeout_s = 15;
  if (interruptible) {
    options.interrupt = [] { return interrupt_this_thread ? Unavailable("interrupted by the test") : Status::Ok(); };
  }
  CreateAndConnect(*job.client, job.trainer, job.engine, options, job.subs, job.pubs, engine_options);
}

struct Round {
  std::vector<Result<PushStats>> pushes;
  std::vector<Result<UpdateStats>> updates;
};

// Every trainer pushes version v (its weights set already) while the engines in `waiting` wait
// for it (concurrently: a relay parent forwards while its children wait).
Round PushAndWait(Job& job, std::uint64_t v, const std::set<int>& waiting) {
  Round out{std::vector<Result<PushStats>>(2, Internal("not run")),
            std::vector<Result<UpdateStats>>(3, Internal("not updating"))};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) threads.emplace_back([&, t] { out.pushes[t] = job.pubs[t]->Push(v); });
  for (int e : waiting) threads.emplace_back([&, e] { out.updates[e] = job.subs[e]->WaitForUpdate(v); });
  for (auto& th : threads) th.join();
  return out;
}

// Version v: the trainers' weights set, the engines in `updating` begin it, then PushAndWait.
Round PushVersion(Job& job, std::uint64_t v, const std::set<int>& updating) {
  for (int t = 0; t < 2; ++t) Walk(job.trainer, t, job.pubs[t]->weights(), v, false);
  for (int e : updating) EXPECT_TRUE(job.subs[e]->BeginUpdate(v).ok());
  return PushAndWait(job, v, updating);
}

// Engine `e`'s WaitForUpdate(v), interrupted by the hook (StartJob's `interruptible`) at its
// first slice without a message: before any trainer pushed, it fails with the hook's status.
Result<UpdateStats> InterruptedWait(Job& job, int e, std::uint64_t v) {
  Result<UpdateStats> out = Internal("not run");
  std::thread([&] {
    interrupt_this_thread = true;
    out = job.subs[e]->WaitForUpdate(v);
  }).join();
  return out;
}

// The trainers' weights set to v and every engine's READY(v) sent, nothing pushed yet.
void BeginEverywhere(Job& job, std::uint64_t v) {
  for (int t = 0; t < 2; ++t) Walk(job.trainer, t, job.pubs[t]->weights(), v, false);
  for (int e = 0; e < 3; ++e) ASSERT_TRUE(job.subs[e]->BeginUpdate(v).ok());
}

// In the chain 0 -> 1 -> 2 whose engine 1 gave v2 up: engine 0 committed every byte of v2, and
// engine 2 was told at once by its relay parent (not at the end of its RELAYED bound).
void ExpectChildToldItsParentGaveUpV2(Job& job, const Round& pushed) {
  ASSERT_TRUE(pushed.updates[0].ok()) << pushed.updates[0].status().ToString();
  EXPECT_EQ(Walk(job.engine, 0, job.subs[0]->weights(), 2, true), 0u);
  ASSERT_FALSE(pushed.updates[2].ok());
  const std::string why = pushed.updates[2].status().ToString();
  EXPECT_NE(why.find("relay parent engine rank 1"), std::string::npos) << why;
  EXPECT_NE(why.find("gave up on v2"), std::string::npos) << "waited out its RELAYED bound: " << why;
}

TEST(WeightSyncRelay, TrainersWriteOneReplicaAndEveryReplicaGetsEveryByteAlongAChain) {
  Job job;
  ASSERT_NO_FATAL_FAILURE(StartJob(job, "relay-chain", 1));  // K = 1: 0 -> 1 -> 2
  const std::uint64_t one_replica = job.engine.rank(0).buffer_bytes;
  for (std::uint64_t v = 1; v <= 3; ++v) {
    Round r = PushVersion(job, v, {0, 1, 2});
    std::uint64_t written = 0;
    for (int t = 0; t < 2; ++t) {
      ASSERT_TRUE(r.pushes[t].ok()) << r.pushes[t].status().ToString();
      EXPECT_TRUE(r.pushes[t]->missed.empty());
      EXPECT_EQ(r.pushes[t]->relayed, (std::vector<int>{1, 2})) << "trainer " << t;
      written += r.pushes[t]->bytes;
    }
    // Each byte left the trainers once: one replica's shards (the tensors are dense, no padding
    // beyond alignment), not three.
    EXPECT_LE(written, one_replica);
    EXPECT_GT(written, one_replica / 2);
    const int from[3] = {-1, 0, 1};
    const std::vector<int> to[3] = {{1}, {2}, {}};
    for (int e = 0; e < 3; ++e) {
      ASSERT_TRUE(r.updates[e].ok()) << "engine rank " << e << ": " << r.updates[e].status().ToString();
      EXPECT_EQ(r.updates[e]->relayed_from, from[e]) << "engine rank " << e;
      EXPECT_EQ(r.updates[e]->relayed_to, to[e]) << "engine rank " << e;
      EXPECT_TRUE(r.updates[e]->relay_failed.empty());
      EXPECT_EQ(job.subs[e]->committed_version(), v);
      EXPECT_EQ(Walk(job.engine, e, job.subs[e]->weights(), v, true), 0u) << "engine rank " << e << " v" << v;
    }
  }
}

TEST(WeightSyncRelay, TheRootForwardsToEveryReplicaWhenKCoversThem) {
  Job job;
  ASSERT_NO_FATAL_FAILURE(StartJob(job, "relay-star", 2));  // K = 2: 0 -> {1, 2}
  Round r = PushVersion(job, 1, {0, 1, 2});
  for (int e = 0; e < 3; ++e) {
    ASSERT_TRUE(r.updates[e].ok()) << "engine rank " << e << ": " << r.updates[e].status().ToString();
    EXPECT_EQ(Walk(job.engine, e, job.subs[e]->weights(), 1, true), 0u) << "engine rank " << e;
  }
  EXPECT_EQ(r.updates[0]->relayed_to, (std::vector<int>{1, 2}));
  EXPECT_EQ(r.updates[1]->relayed_from, 0);
  EXPECT_EQ(r.updates[2]->relayed_from, 0);
}

TEST(WeightSyncRelay, AChildWhoseParentIsNotReadyIsWrittenDirectlyAndTheParentCatchesUpNextVersion) {
  Job job;
  ASSERT_NO_FATAL_FAILURE(StartJob(job, "relay-fault", 1));  // 0 -> 1 -> 2
  ASSERT_TRUE(PushVersion(job, 1, {0, 1, 2}).updates[2].ok());
  // v2: the middle replica stalls (no READY within engine_timeout_s): it misses v2, and its
  // child is written by the trainers instead of waiting for a forward that cannot come.
  Round r = PushVersion(job, 2, {0, 2});
  for (int t = 0; t < 2; ++t) {
    ASSERT_TRUE(r.pushes[t].ok()) << r.pushes[t].status().ToString();
    ASSERT_EQ(r.pushes[t]->missed.size(), 1u);
    EXPECT_EQ(r.pushes[t]->missed[0].engine_rank, 1);
    EXPECT_TRUE(r.pushes[t]->relayed.empty());
  }
  for (int e : {0, 2}) {
    ASSERT_TRUE(r.updates[e].ok()) << "engine rank " << e << ": " << r.updates[e].status().ToString();
    EXPECT_EQ(r.updates[e]->relayed_from, -1);
    EXPECT_EQ(Walk(job.engine, e, job.subs[e]->weights(), 2, true), 0u) << "engine rank " << e;
  }
  EXPECT_TRUE(r.updates[0]->relayed_to.empty());
  EXPECT_EQ(job.subs[1]->committed_version(), 1u);
  EXPECT_EQ(Walk(job.engine, 1, job.subs[1]->weights(), 1, true), 0u);  // still whole v1
  // v3: all ready again; the chain is back and the stalled replica is whole again.
  r = PushVersion(job, 3, {0, 1, 2});
  for (int e = 0; e < 3; ++e) {
    ASSERT_TRUE(r.updates[e].ok()) << "engine rank " << e << ": " << r.updates[e].status().ToString();
    EXPECT_EQ(Walk(job.engine, e, job.subs[e]->weights(), 3, true), 0u) << "engine rank " << e;
  }
  EXPECT_EQ(r.updates[2]->relayed_from, 1);
}

// A relay parent whose own wait for v ends before its sources' RELAY_PLANs of v arrived (here
// interrupted: an engine stopped by Ctrl-C after its READY) never learns whom it would forward
// v to; it still tells its children, so the child the trainers relayed through it fails v at
// once (with the parent's MISSED) instead of waiting out its RELAYED bound (20 s here), and the
// next version reaches everyone.
TEST(WeightSyncRelay, AChildIsToldAtOnceWhenItsParentGaveUpBeforeItsPlanArrived) {
  Job job;
  ASSERT_NO_FATAL_FAILURE(StartJob(job, "relay-parent-gave-up", 1, /*interruptible=*/true));  // 0 -> 1 -> 2
  ASSERT_TRUE(PushVersion(job, 1, {0, 1, 2}).updates[2].ok());
  ASSERT_NO_FATAL_FAILURE(BeginEverywhere(job, 2));
  // Engine 1 sent READY(2) and gives up before any trainer pushed.
  const Result<UpdateStats> parent = InterruptedWait(job, 1, 2);
  ASSERT_FALSE(parent.ok());
  EXPECT_NE(parent.status().message().find("interrupted by the test"), std::string::npos) << parent.status().ToString();
  // Its children were told: the same wait is refused now rather than committed and forwarded to
  // children that gave the version up.
  const auto again = job.subs[1]->WaitForUpdate(2);
  EXPECT_EQ(again.status().code(), ErrorCode::kFailedPrecondition) << again.status().ToString();
  Round pushed = PushAndWait(job, 2, {0, 2});
  for (int t = 0; t < 2; ++t) {
    ASSERT_TRUE(pushed.pushes[t].ok()) << pushed.pushes[t].status().ToString();
    EXPECT_EQ(pushed.pushes[t]->relayed, (std::vector<int>{1, 2})) << "engine 1 was READY when the trainers pushed";
  }
  ASSERT_NO_FATAL_FAILURE(ExpectChildToldItsParentGaveUpV2(job, pushed));
  EXPECT_EQ(job.subs[2]->committed_version(), 1u);
  // v3: everyone ready; the chain delivers every byte again.
  Round r = PushVersion(job, 3, {0, 1, 2});
  for (int e = 0; e < 3; ++e) {
    ASSERT_TRUE(r.updates[e].ok()) << "engine rank " << e << ": " << r.updates[e].status().ToString();
    EXPECT_EQ(Walk(job.engine, e, job.subs[e]->weights(), 3, true), 0u) << "engine rank " << e;
  }
  EXPECT_EQ(r.updates[2]->relayed_from, 1);
}

// A relayed child whose own short bound (WaitForUpdate's timeout_s) runs out while it waits for
// its parent's forward (its DONE and RELAY_PLAN arrived, the parent had not committed yet) waits
// again for the same version and gets it: what arrived was kept (before, the repeated wait
// waited for a DONE the trainers never send again, and timed out).
TEST(WeightSyncRelay, AChildWhoseShortWaitEndedBeforeItsForwardTakesItWhenItWaitsAgain) {
  Job job;
  ASSERT_NO_FATAL_FAILURE(StartJob(job, "relay-child-short-wait", 1));  // 0 -> 1 -> 2
  ASSERT_TRUE(PushVersion(job, 1, {0, 1, 2}).updates[2].ok());
  ASSERT_NO_FATAL_FAILURE(BeginEverywhere(job, 2));
  const Round pushed = PushAndWait(job, 2, {});  // the trainers' part only: nobody waits yet
  for (int t = 0; t < 2; ++t) ASSERT_TRUE(pushed.pushes[t].ok()) << pushed.pushes[t].status().ToString();
  const auto early = job.subs[2]->WaitForUpdate(2, 0.3);
  ASSERT_FALSE(early.ok());
  EXPECT_EQ(early.status().code(), ErrorCode::kTimedOut) << early.status().ToString();
  EXPECT_NE(early.status().message().find("relay parent engine rank 1"), std::string::npos)
      << early.status().ToString();
  std::vector<Result<UpdateStats>> parents(2, Internal("not run"));
  {
    std::vector<std::thread> threads;
    for (int e = 0; e < 2; ++e) threads.emplace_back([&, e] { parents[e] = job.subs[e]->WaitForUpdate(2); });
    for (auto& th : threads) th.join();
  }
  for (int e = 0; e < 2; ++e)
    ASSERT_TRUE(parents[e].ok()) << "engine rank " << e << ": " << parents[e].status().ToString();
  EXPECT_EQ(parents[1]->relayed_to, std::vector<int>{2});
  const auto again = job.subs[2]->WaitForUpdate(2);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->relayed_from, 1);
  EXPECT_EQ(Walk(job.engine, 2, job.subs[2]->weights(), 2, true), 0u);
}

// A relay parent closed during an update (WeightSubscriber::Close, as Python's close() does
// while tensor views keep its agent alive) tells its children at once that it will not forward
// the version: before, they waited out their RELAYED bound for a forward that never came. Every
// later call on it is refused, naming the call, and what it committed stays readable.
TEST(WeightSyncRelay, ARelayParentClosedDuringAnUpdateTellsItsChildrenAtOnce) {
  Job job;
  ASSERT_NO_FATAL_FAILURE(StartJob(job, "relay-parent-closed", 1));  // 0 -> 1 -> 2
  ASSERT_TRUE(PushVersion(job, 1, {0, 1, 2}).updates[2].ok());
  ASSERT_NO_FATAL_FAILURE(BeginEverywhere(job, 2));
  job.subs[1]->Close();
  job.subs[1]->Close();  // idempotent
  Round pushed = PushAndWait(job, 2, {0, 2});
  for (int t = 0; t < 2; ++t) ASSERT_TRUE(pushed.pushes[t].ok()) << pushed.pushes[t].status().ToString();
  ASSERT_NO_FATAL_FAILURE(ExpectChildToldItsParentGaveUpV2(job, pushed));
  EXPECT_EQ(job.subs[1]->committed_version(), 1u);
  const Status begin = job.subs[1]->BeginUpdate(3);
  EXPECT_EQ(begin.code(), ErrorCode::kFailedPrecondition) << begin.ToString();
  EXPECT_NE(begin.message().find("WeightSubscriber::BeginUpdate on engine rank 1 after Close"), std::string::npos)
      << begin.ToString();
  const auto wait = job.subs[1]->WaitForUpdate(2);
  EXPECT_EQ(wait.status().code(), ErrorCode::kFailedPrecondition) << wait.status().ToString();
  EXPECT_EQ(job.subs[1]->Connect().code(), ErrorCode::kFailedPrecondition);
  job.pubs[0]->Close();
  const auto push = job.pubs[0]->Push(3);
  EXPECT_EQ(push.status().code(), ErrorCode::kFailedPrecondition) << push.status().ToString();
  EXPECT_NE(push.status().message().find("WeightPublisher::Push on trainer rank 0 after Close"), std::string::npos)
      << push.status().ToString();
  EXPECT_GT(job.pubs[0]->bytes_per_push(), 0u);
}

// A relayed child whose wait for v is interrupted (before any trainer pushed) may wait for v
// again (WeightSyncOptions::interrupt) and still get it through its parent: it tells its parent
// it gave v up only once it moves on to a later version, not at the interrupt.
TEST(WeightSyncRelay, ARelayedChildInterruptedBeforeItsForwardTakesItWhenItWaitsAgain) {
  Job job;
  ASSERT_NO_FATAL_FAILURE(StartJob(job, "relay-child-retries", 1, /*interruptible=*/true));  // 0 -> 1 -> 2
  ASSERT_TRUE(PushVersion(job, 1, {0, 1, 2}).updates[2].ok());
  ASSERT_NO_FATAL_FAILURE(BeginEverywhere(job, 2));
  const Result<UpdateStats> interrupted = InterruptedWait(job, 2, 2);
  ASSERT_FALSE(interrupted.ok());
  EXPECT_NE(interrupted.status().message().find("interrupted by the test"), std::string::npos)
      << interrupted.status().ToString();
  const Round r = PushAndWait(job, 2, {0, 1, 2});
  for (int t = 0; t < 2; ++t) ASSERT_TRUE(r.pushes[t].ok()) << r.pushes[t].status().ToString();
  for (int e = 0; e < 3; ++e) {
    ASSERT_TRUE(r.updates[e].ok()) << "engine rank " << e << ": " << r.updates[e].status().ToString();
    EXPECT_EQ(Walk(job.engine, e, job.subs[e]->weights(), 2, true), 0u) << "engine rank " << e;
  }
  EXPECT_EQ(r.updates[2]->relayed_from, 1);
  EXPECT_EQ(r.updates[1]->relayed_to, std::vector<int>{2});
}

// A relay parent late by more than its child's RELAYED wait (min(timeout_s, 2 x
// engine_timeout_s)): the child gives v up and takes v+1 straight from the trainers; the parent
// then commits v and must not forward it into the buffer the child now serves v+1 from. The
// child told it as it began v+1 (MISSED(v), child -> parent), and the parent asks right before
// the forward.
TEST(WeightSyncRelay, ALateParentDoesNotForwardIntoAChildThatMovedOn) {
  Job job;
  // Engine 2 waits 10 s for a forward (2 x its own engine_timeout_s, which bounds nothing else
  // on a leaf); every other wait keeps its 15 s or 20 s.
  ASSERT_NO_FATAL_FAILURE(StartJob(job, "relay-late-parent", 1, false, [](int e, WeightSyncOptions& o) {
    if (e == 2) o.engine_timeout_s = 5;
  }));  // 0 -> 1 -> 2
  ASSERT_TRUE(PushVersion(job, 1, {0, 1, 2}).updates[2].ok());
  // v2: every engine is READY, but engine 1 (the parent of 2) waits for it only much later.
  ASSERT_NO_FATAL_FAILURE(BeginEverywhere(job, 2));
  {
    const Round r = PushAndWait(job, 2, {0, 2});
    for (int t = 0; t < 2; ++t) ASSERT_TRUE(r.pushes[t].ok()) << r.pushes[t].status().ToString();
    ASSERT_TRUE(r.updates[0].ok()) << r.updates[0].status().ToString();
    ASSERT_FALSE(r.updates[2].ok()) << "engine 2 got v2 without its relay parent";
    EXPECT_NE(r.updates[2].status().message().find("RELAYED v2 still missing"), std::string::npos)
        << r.updates[2].status().ToString();
  }
  // v3: engine 1 is still not back (no READY within 15 s): engine 2 is written directly and
  // commits v3.
  Round r = PushVersion(job, 3, {0, 2});
  for (int e : {0, 2}) {
    ASSERT_TRUE(r.updates[e].ok()) << "engine rank " << e << ": " << r.updates[e].status().ToString();
    EXPECT_EQ(r.updates[e]->relayed_from, -1) << "engine rank " << e;
    EXPECT_EQ(Walk(job.engine, e, job.subs[e]->weights(), 3, true), 0u) << "engine rank " << e;
  }
  // Engine 1 comes back and waits for v2: its bytes are all there (engine 0 forwarded them), it
  // commits v2, and does not forward v2 over engine 2's v3.
  auto late = job.subs[1]->WaitForUpdate(2);
  ASSERT_TRUE(late.ok()) << late.status().ToString();
  EXPECT_EQ(Walk(job.engine, 1, job.subs[1]->weights(), 2, true), 0u);
  EXPECT_EQ(job.subs[2]->committed_version(), 3u);
  EXPECT_EQ(Walk(job.engine, 2, job.subs[2]->weights(), 3, true), 0u) << "v2 forwarded over engine 2's v3";
  EXPECT_TRUE(late->relayed_to.empty());
  ASSERT_EQ(late->relay_failed.size(), 1u);
  EXPECT_EQ(late->relay_failed[0].engine_rank, 2);
  EXPECT_NE(late->relay_failed[0].reason.message().find("gave v2 up"), std::string::npos)
      << late->relay_failed[0].reason.ToString();
  // v4: everyone ready; the chain is back (the MISSED messages of v2 and v3 left in inboxes are
  // dropped as stale).
  r = PushVersion(job, 4, {0, 1, 2});
  for (int e = 0; e < 3; ++e) {
    ASSERT_TRUE(r.updates[e].ok()) << "engine rank " << e << ": " << r.updates[e].status().ToString();
    EXPECT_EQ(Walk(job.engine, e, job.subs[e]->weights(), 4, true), 0u) << "engine rank " << e;
  }
  EXPECT_EQ(r.updates[2]->relayed_from, 1);
}

TEST(WeightSyncRelay, ADoubleBufferedParentForwardsIntoASingleBufferedChild) {
  Job job;
  // Engine 0 double-buffered, its children single-buffered: the parent's Connect prepared
  // forwards into its own buffer count of the child's buffers, and refused to connect ("asked
  // for buffer 1 it never published").
  ASSERT_NO_FATAL_FAILURE(StartJob(job, "relay-mixed-buffers", 1, false, [](int e, WeightSyncOptions& o) {
    if (e == 0) o.double_buffered = true;
  }));  // 0 -> 1 -> 2
  for (std::uint64_t v = 1; v <= 3; ++v) {
    Round r = PushVersion(job, v, {0, 1, 2});
    for (int t = 0; t < 2; ++t) ASSERT_TRUE(r.pushes[t].ok()) << r.pushes[t].status().ToString();
    for (int e = 0; e < 3; ++e) {
      ASSERT_TRUE(r.updates[e].ok()) << "engine rank " << e << ": " << r.updates[e].status().ToString();
      EXPECT_EQ(r.updates[e]->relayed_from, e - 1) << "engine rank " << e;
      EXPECT_EQ(Walk(job.engine, e, job.subs[e]->weights(), v, true), 0u) << "engine rank " << e << " v" << v;
    }
  }
}

TEST(WeightSyncRelay, AChildThatGaveUpItsFirstRelayedVersionTellsItsParentWhenItMovesOn) {
  Job job;
  // As ALateParentDoesNotForwardIntoAChildThatMovedOn, but the child fails v1, its first
  // version, before any plan named its parent: the parent must be known (imported at Connect)
  // for the child to decline v1 as it moves on to v2.
  ASSERT_NO_FATAL_FAILURE(StartJob(job, "relay-first-version", 1, /*interruptible=*/true));  // 0 -> 1 -> 2
  ASSERT_NO_FATAL_FAILURE(BeginEverywhere(job, 1));
  auto gave_up = InterruptedWait(job, 2, 1);
  ASSERT_FALSE(gave_up.ok());
  {
    // v1 reaches engine 0; engine 1 (READY, not waiting) gets engine 0's forward later when
    // it waits; engine 2 has moved on.
    const Round r = PushAndWait(job, 1, {0});
    for (int t = 0; t < 2; ++t) ASSERT_TRUE(r.pushes[t].ok()) << r.pushes[t].status().ToString();
    ASSERT_TRUE(r.updates[0].ok()) << r.updates[0].status().ToString();
  }
  // v2: engine 2 begins it (declining v1 to engine 1), engine 1 does not: written directly.
  Round r = PushVersion(job, 2, {0, 2});
  for (int e : {0, 2}) {
    ASSERT_TRUE(r.updates[e].ok()) << "engine rank " << e << ": " << r.updates[e].status().ToString();
    EXPECT_EQ(Walk(job.engine, e, job.subs[e]->weights(), 2, true), 0u) << "engine rank " << e;
  }
  EXPECT_EQ(r.updates[2]->relayed_from, -1);
  // Engine 1 now waits for v1: it commits it and does not forward v1 over engine 2's v2.
  auto late = job.subs[1]->WaitForUpdate(1);
  ASSERT_TRUE(late.ok()) << late.status().ToString();
  EXPECT_EQ(Walk(job.engine, 1, job.subs[1]->weights(), 1, true), 0u);
  EXPECT_EQ(Walk(job.engine, 2, job.subs[2]->weights(), 2, true), 0u) << "v1 forwarded over engine 2's v2";
  EXPECT_TRUE(late->relayed_to.empty());
  ASSERT_EQ(late->relay_failed.size(), 1u);
  EXPECT_EQ(late->relay_failed[0].engine_rank, 2);
}

TEST(WeightSyncRelay, PeersThatDisagreeOnRelaysAreRefusedAtConnect) {
  auto server = StartRendezvous();
  ASSERT_TRUE(server.ok());
  auto client = ConnectRendezvous(static_cast<std::uint16_t>((*server)->port()));
  ASSERT_TRUE(client.ok());
  const Layout trainer = MakeFsdpLayout(Tensors(), 1).value();
  const Layout engine = MakeTpLayout(Tensors(), {0, 0, 1, -1}, 1, 2).value();
  WeightSyncOptions relays{"relay-mismatch", 5};
  relays.relay_broadcasts = true;
  auto sub = WeightSubscriber::Create(**client, trainer, engine, 0, relays);
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  auto pub = WeightPublisher::Create(**client, trainer, engine, 0, {"relay-mismatch", 5});
  ASSERT_TRUE(pub.ok()) << pub.status().ToString();
  const Status st = (*pub)->Connect();
  EXPECT_EQ(st.code(), ErrorCode::kLayoutMismatch) << st.ToString();
  EXPECT_NE(st.message().find("relays"), std::string::npos) << st.ToString();
}

}  // namespace
}  // namespace shardwire
