// Unit tests of the in-memory CoordinatorState: KV semantics, source leases
// derived at read time (time is passed in, so no sleeps), job epochs and commits.
#include <gtest/gtest.h>

#include "control/coordinator_state.h"
#include "control/test_util.h"

namespace shardwire::control {
namespace {

using testing_util::BytesOf;

LeasePolicy Policy() {
  LeasePolicy p;
  p.source_stale_after_s = 10;
  p.source_delete_after_s = 60;
  p.source_mark_hold_s = 0;  // a mark lasts until the next heartbeat (the hold: coordinator_state_test.cc)
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
  r.metadata = BytesOf("meta-" + instance + "-" + std::to_string(rank));
  r.attributes["region"] = "3";
  return r;
}

TEST(InMemoryCoordinatorState, KvPutGetAddAndGeneration) {
  auto st = MakeInMemoryCoordinatorState(Policy());
  auto g0 = st->KvGeneration();
  ASSERT_TRUE(g0.ok());
  auto missing = st->Get("k");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  ASSERT_TRUE(st->Put("k", BytesOf(std::string("a\0b", 3))).ok());
  auto got = st->Get("k");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ(**got, BytesOf(std::string("a\0b", 3)));
  auto g1 = st->KvGeneration();
  EXPECT_NE(*g0, *g1);
  EXPECT_EQ(*st->Add("c", 5), 5);
  EXPECT_EQ(*st->Add("c", -7), -2);
  EXPECT_EQ(**st->Get("c"), BytesOf("-2"));
  EXPECT_NE(*st->KvGeneration(), *g1);
  auto bad = st->Add("k", 1);
  EXPECT_EQ(bad.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(st->Put("", BytesOf("x")).code(), ErrorCode::kInvalidArgument);
}

TEST(InMemoryCoordinatorState, SourceLifecycleAndDerivedLease) {
  auto st = MakeInMemoryCoordinatorState(Policy());
  const std::int64_t t0 = 1'000'000;
  auto a1 = st->RegisterSource(Source("m1", "b-inst", 1, 2), t0);
  auto a0 = st->RegisterSource(Source("m1", "b-inst", 0, 2), t0);
  auto other = st->RegisterSource(Source("m2", "a-inst", 0, 1), t0);
  ASSERT_TRUE(a1.ok() && a0.ok() && other.ok());
  EXPECT_EQ(a0->source_id.size(), 4u + 16u);
  EXPECT_EQ(a0->source_id.rfind("src-", 0), 0u);
  EXPECT_NE(a0->source_id, a1->source_id);
  EXPECT_EQ(a0->registered_unix_ms, t0);
  EXPECT_EQ(a0->state, SourceState::kReady);

  auto list = st->ListSources("m1", std::nullopt, t0 + 1);
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].rank, 0);  // sorted by (instance, rank)
  EXPECT_EQ((*list)[1].rank, 1);
  EXPECT_EQ((*list)[0].metadata, BytesOf("meta-b-inst-0"));
  EXPECT_EQ((*list)[0].attributes.at("region"), "3");
  EXPECT_EQ(st->ListSources("", std::nullopt, t0)->size(), 3u);
  EXPECT_EQ((*st->ListSources("", std::nullopt, t0))[0].instance_id, "a-inst");

  // Heartbeat a0 at t0+8 s; at t0+12 s a1 is STALE (derived, before any Reap), a0 READY.
  ASSERT_TRUE(st->HeartbeatSource(a0->source_id, t0 + 8000).ok());
  auto ready = st->ListSources("m1", SourceState::kReady, t0 + 12000);
  ASSERT_EQ(ready->size(), 1u);
  EXPECT_EQ((*ready)[0].source_id, a0->source_id);
  auto stale = st->ListSources("m1", SourceState::kStale, t0 + 12000);
  ASSERT_EQ(stale->size(), 1u);
  EXPECT_EQ((*stale)[0].source_id, a1->source_id);
  EXPECT_FALSE((*stale)[0].stale_reason.empty());

  // Marked stale, then (no hold) a heartbeat makes it READY again.
  ASSERT_TRUE(st->MarkSourceStale(a0->source_id, "read failed", t0 + 12000, /*hold=*/true).ok());
  stale = st->ListSources("m1", SourceState::kStale, t0 + 12000);
  ASSERT_EQ(stale->size(), 2u);
  EXPECT_EQ((*stale)[0].stale_reason, "read failed");
  ASSERT_TRUE(st->HeartbeatSource(a0->source_id, t0 + 13000).ok());
  EXPECT_EQ(st->ListSources("m1", SourceState::kReady, t0 + 13000)->size(), 1u);

  // Reap writes STALE and later deletes; deleted sources are gone for heartbeats.
  auto r1 = st->Reap(t0 + 15000);
  ASSERT_TRUE(r1.ok());
  EXPECT_EQ(r1->sources_marked_stale, 2);  // a1 and `other`
  EXPECT_EQ(r1->sources_deleted, 0);
  auto r2 = st->Reap(t0 + 61000);
  EXPECT_EQ(r2->sources_deleted, 2);
  EXPECT_EQ(st->HeartbeatSource(a1->source_id, t0 + 61000).status().code(), ErrorCode::kNotFound);
  // Deleted at read time even without Reap: a0 last heartbeat t0+13 s.
  EXPECT_EQ(st->ListSources("", std::nullopt, t0 + 73000)->size(), 0u);
  EXPECT_EQ(st->HeartbeatSource(a0->source_id, t0 + 73000).status().code(), ErrorCode::kNotFound);

  EXPECT_EQ(st->MarkSourceStale("src-nope", "", t0, false).code(), ErrorCode::kNotFound);
  EXPECT_EQ(st->DeregisterSource("src-nope").code(), ErrorCode::kNotFound);
}

TEST(InMemoryCoordinatorState, Deregister) {
  auto st = MakeInMemoryCoordinatorState(Policy());
  auto a = st->RegisterSource(Source("m", "i", 0, 1), 0);
  ASSERT_TRUE(st->DeregisterSource(a->source_id).ok());
  EXPECT_EQ(st->ListSources("m", std::nullopt, 0)->size(), 0u);
  EXPECT_EQ(st->DeregisterSource(a->source_id).code(), ErrorCode::kNotFound);
}

JobMember Member(const std::string& id, JobRole role) {
  JobMember m;
  m.member_id = id;
  m.role = role;
  m.group = "engine-1";
  m.metadata = BytesOf("blob-" + id);
  return m;
}

TEST(InMemoryCoordinatorState, JobsEpochsCommitsAndExpiry) {
  auto st = MakeInMemoryCoordinatorState(Policy());
  EXPECT_EQ(st->GetJob("j", 0).status().code(), ErrorCode::kNotFound);
  auto v1 = st->JoinJob("j", Member("trainer/0", JobRole::kPublisher), 0);
  ASSERT_TRUE(v1.ok());
  EXPECT_EQ(v1->membership_epoch, 1u);
  auto v2 = st->JoinJob("j", Member("engine/0", JobRole::kSubscriber), 100);
  ASSERT_TRUE(v2.ok());
  EXPECT_EQ(v2->membership_epoch, 2u);
  ASSERT_EQ(v2->members.size(), 2u);
  EXPECT_EQ(v2->members[0].member_id, "engine/0");  // sorted
  EXPECT_EQ(v2->members[0].metadata, BytesOf("blob-engine/0"));
  EXPECT_EQ(st->JoinJob("j", Member("engine/0", JobRole::kSubscriber), 200).status().code(), ErrorCode::kAlreadyExists);

  ASSERT_TRUE(st->CommitVersion("j", "engine/0", 3, 300).ok());
  ASSERT_TRUE(st->CommitVersion("j", "engine/0", 3, 300).ok());  // equal: no-op
  EXPECT_EQ(st->CommitVersion("j", "engine/0", 2, 300).code(), ErrorCode::kFailedPrecondition);
  EXPECT_EQ(st->GetJob("j", 300)->members[0].committed_version, 3u);
  EXPECT_EQ(st->CommitVersion("j", "ghost", 1, 300).code(), ErrorCode::kNotFound);

  ASSERT_TRUE(st->LeaveJob("j", "trainer/0", 400).ok());
  EXPECT_EQ(st->LeaveJob("j", "trainer/0", 400).code(), ErrorCode::kNotFound);
  auto v3 = st->GetJob("j", 400);
  EXPECT_EQ(v3->membership_epoch, 3u);
  ASSERT_EQ(v3->members.size(), 1u);

  // engine/0 heartbeats at 4 s; expires at 9 s (lease 5 s), epoch bumps.
  ASSERT_TRUE(st->HeartbeatMember("j", "engine/0", 4000).ok());
  EXPECT_EQ(st->GetJob("j", 8000)->members.size(), 1u);
  auto reaped = st->Reap(9000);
  EXPECT_EQ(reaped->members_expired, 1);
  auto v4 = st->GetJob("j", 9000);
  ASSERT_TRUE(v4.ok());  // history remains
  EXPECT_EQ(v4->membership_epoch, 4u);
  EXPECT_TRUE(v4->members.empty());
  EXPECT_EQ(st->HeartbeatMember("j", "engine/0", 9000).code(), ErrorCode::kNotFound);
  // The id is free again after expiry.
  EXPECT_TRUE(st->JoinJob("j", Member("engine/0", JobRole::kSubscriber), 9100).ok());
}

TEST(SourceStateName, Names) {
  EXPECT_EQ(SourceStateName(SourceState::kReady), "READY");
  EXPECT_EQ(SourceStateName(SourceState::kStale), "STALE");
}

}  // namespace
}  // namespace shardwire::control
