// Partial(sum) trainer shards in a converting push: bf16 addends over the trainer ranks into
// FP8 block-128 engines (TP=2, 2 replicas). The reducer of each chunk of a sum gets the other
// addends into its scratch, sums them and converts the sum like a shard it owns. Trainer and
// engine ranks are threads of this process, each with its own UCX agent, through a real
// in-process gRPC coordinator (as WeightSyncRounds.ConvertingPush*). Oracle: the test sums the
// addends itself (fp32, one round-to-nearest-even to bf16, its own code), then the fixture
// quantises the WHOLE summed tensor (QuantizeFp8BlockTensor) and compares every engine byte:
// FP8 weights, their scales, the norm cast to fp32 and the unconverted emb.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fp8_push_fixture.h"
#include "shardwire/device_mesh.h"
#include "shardwire/push_conversion.h"
#include "shardwire/weight_sync.h"
#include "weight_sync_fixture.h"

namespace shardwire {
namespace {

using namespace weight_sync_test;  // NOLINT: the fixtures of these tests

// Trainer rank `rank`'s addend of `spec` at `version`: the fixture's values under another seed
// per rank (another name length, another magnitude pattern), so the addends differ everywhere.
std::vector<std::byte> AddendBf16(const TensorSpec& spec, int rank, std::uint64_t version) {
  TensorSpec seeded = spec;
  seeded.name += std::string(static_cast<std::size_t>(rank) * 3, '+');
  return FullBf16(seeded, version + static_cast<std::uint64_t>(rank) * 7);
}

float Bf16ToFloat(const std::byte* p) {
  std::uint16_t b = 0;
  std::memcpy(&b, p, 2);
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f = 0;
  std::memcpy(&f, &u, 4);
  return f;
}

std::uint16_t RoundToBf16(float f) {  // finite values only (the addends are)
  std::uint32_t u = 0;
  std::memcpy(&u, &f, 4);
  return static_cast<std::uint16_t>((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}

// The whole values of every trainer tensor at `version`: a tensor held as Partial(sum) addends
// is the fp32 sum of addends 0 .. addends-1, rounded once to bf16; the others are FullBf16.
std::map<std::string, std::vector<std::byte>> Expected(const Layout& trainer, int addends, std::uint64_t version) {
  std::map<std::string, std::vector<std::byte>> full;
  for (std::uint32_t t = 0; t < trainer.tensors().size(); ++t) {
    const TensorSpec& spec = trainer.tensors()[t];
    bool partial = false;
    for (int r = 0; r < trainer.world_size(); ++r) {
      const ShardRef* s = trainer.rank(r).Find(t);
      partial = partial || (s != nullptr && s->partial_group != 0);
    }
    if (!partial) {
      full[spec.name] = FullBf16(spec, version);
      continue;
    }
    std::vector<std::vector<std::byte>> parts;
    for (int a = 0; a < addends; ++a) parts.push_back(AddendBf16(spec, a, version));
    std::vector<std::byte> sum(parts.front().size());
    for (std::size_t e = 0; e < sum.size(); e += 2) {
      float acc = 0;
      for (const auto& part : parts) acc += Bf16ToFloat(part.data() + e);
      const std::uint16_t b = RoundToBf16(acc);
      std::memcpy(sum.data() + e, &b, 2);
    }
    full[spec.name] = std::move(sum);
  }
  return full;
}

// What trainer rank `rank` holds at `version`: its shard of the values, or of addend i, where i
// counts the lower ranks holding the same box of the tensor in the same sum group (so the
// members of every group hold addends 0, 1, ...).
void FillTrainer(const Layout& trainer, int rank, std::span<std::byte> w, std::uint64_t version) {
  for (const ShardRef& s : trainer.rank(rank).shards) {
    const TensorSpec& spec = trainer.tensors()[s.tensor];
    int addend = 0;
    for (int r = 0; r < rank; ++r) {
      const ShardRef* o = trainer.rank(r).Find(s.tensor);
      addend += o != nullptr && o->partial_group == s.partial_group && o->box == s.box;
    }
    const auto whole = s.partial_group != 0 ? AddendBf16(spec, addend, version) : FullBf16(spec, version);
    const auto bytes = Crop(whole, spec.shape, s.box, 2);
    std::memcpy(w.data() + s.byte_offset, bytes.data(), bytes.size());
  }
}

struct Case {
  std::string job;
  Layout trainer;
  int k = 4;
  bool into_mapped = true;
  bool direct_partial = true;      // emb (moved unchanged) is Partial too
  bool sums_share_blocks = false;  // reducers of two sums exchange the partial amaxes of a block
};

// dp=2, every tensor but wk a Partial(sum) over both ranks: emb is moved unchanged (a direct
// tensor with Partial sources), wq and wo are quantised from their sums, norm is cast from its
// sum, and wk is an ordinary FSDP shard (rows split at 100: its first block-row straddles the
// ranks and they exchange partial amaxes) in the same push.
Layout DataParallelPartial() {
  const DeviceMesh mesh = DeviceMesh::Create({{"dp", 2}}).value();
  const auto P = Placement::Partial(), S0 = Placement::Shard(0);
  return MakeDTensorLayout("dp2-partial", TrainerBf16(), mesh, {{P}, {P}, {P}, {S0}, {P}}).value();
}

// A 2-D mesh (dp=2 Partial x tp=2): wk is [Partial, Shard(1)] (columns split at 160, so the
// reducers of the two column halves share block column 1 and exchange partial amaxes), wq
// [Partial, Shard(0)], norm [Partial, Replicate] (two sum groups hold the same sum: four
// reducers), wo [Shard(0), Partial] (Partial along tp), emb [Replicate, Shard(0)] (no Partial).
Layout TwoDimPartial() {
  const DeviceMesh mesh = DeviceMesh::Create({{"dp", 2}, {"tp", 2}}).value();
  const auto P = Placement::Partial(), S0 = Placement::Shard(0), S1 = Placement::Shard(1), R = Placement::Replicate();
  return MakeDTensorLayout("dp2xtp2-partial", TrainerBf16(), mesh, {{R, S0}, {P, S0}, {S0, P}, {P, S1}, {P, R}})
      .value();
}

void PushPartialIntoFp8(const Case& c) {
  auto server = StartRendezvous();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  auto client = ConnectRendezvous(static_cast<std::uint16_t>((*server)->port()));
  ASSERT_TRUE(client.ok()) << client.status().ToString();
  const Layout& trainer = c.trainer;
  const Layout engine = MakeTpLayout(EngineFp8(), {0, 0, 0, 1, 1, -1, -1, -1}, 2, 2).value();
  const int trainers = trainer.world_size();
  WeightSyncOptions options{c.job, 30};
  options.max_concurrency = c.k;
  options.convert_into_mapped = c.into_mapped;
  options.conversion.staging_bytes = 160 << 10;  // several staging rounds per push
  options.verify_digests = true;

  // The plan: the converted tensors' sums are reduced (reductions beyond the direct plan's), and
  // the joint schedule keeps at most K writers per engine rank in every round.
  const auto conversion =
      PushConversion::Create(trainer, engine, options.conversion, PlanOptions{.max_concurrency = c.k});
  ASSERT_TRUE(conversion.ok()) << conversion.status().ToString();
  ASSERT_TRUE(conversion->converts());
  ASSERT_GT(conversion->reductions().size(), conversion->direct_plan().reductions().size());
  if (c.direct_partial) {
    ASSERT_FALSE(conversion->direct_plan().reductions().empty()) << "emb's Partial sources are reduced too";
  }
  std::map<std::pair<std::uint32_t, int>, std::set<std::uint32_t>> writers;  // (round, engine rank) -> trainer ranks
  for (const TransferPlan* plan : {&conversion->direct_plan(), &conversion->converted_plan()}) {
    for (const Bucket& b : plan->buckets()) {
      for (std::uint32_t d : plan->dst_groups()[b.dst_group])
        writers[{b.round, static_cast<int>(d)}].insert(b.src_rank);
    }
  }
  for (const auto& [key, ranks] : writers) {
    EXPECT_LE(ranks.size(), static_cast<std::size_t>(c.k)) << "round " << key.first << ", engine rank " << key.second;
  }
  std::size_t reduced_blocks_exchanged = 0;  // blocks of a reduced sum whose partial amax a reducer sends
  for (int t = 0; t < trainers; ++t) {
    const auto tc = conversion->ForTrainerRank(t);
    ASSERT_TRUE(tc.ok()) << tc.status().ToString();
    for (const BlockAmaxExchange& x : tc->exchanges) {
      for (const BlockRef& b : x.send) reduced_blocks_exchanged += conversion->SourceOf(t, b.wire_tensor)->in_scratch;
    }
  }
  EXPECT_EQ(reduced_blocks_exchanged > 0, c.sums_share_blocks);

  std::vector<std::unique_ptr<WeightSubscriber>> subs;
  std::vector<std::unique_ptr<WeightPublisher>> pubs;
  ASSERT_NO_FATAL_FAILURE(CreateAndConnect(**client, trainer, engine, options, subs, pubs));
  for (std::uint64_t v = 1; v <= 3; ++v) {
    for (int t = 0; t < trainers; ++t) FillTrainer(trainer, t, pubs[t]->weights(), v);
    for (auto& sub : subs) ASSERT_TRUE(sub->BeginUpdate(v).ok());
    std::vector<Result<PushStats>> results(static_cast<std::size_t>(trainers), Internal("not run"));
    std::vector<std::thread> pushes;
    for (int t = 0; t < trainers; ++t) pushes.emplace_back([&, t] { results[t] = pubs[t]->Push(v); });
    for (auto& th : pushes) th.join();
    for (int t = 0; t < trainers; ++t) {
      ASSERT_TRUE(results[t].ok()) << "trainer " << t << ": " << results[t].status().ToString();
      EXPECT_TRUE(results[t]->missed.empty());
      if (c.into_mapped) {
        EXPECT_EQ(results[t]->mapped_bytes, results[t]->converted_bytes) << "trainer " << t;
      } else {
        EXPECT_EQ(results[t]->mapped_bytes, 0u) << "trainer " << t;
      }
    }
    const auto expected = Expected(trainer, 2, v);
    for (int e = 0; e < engine.world_size(); ++e) {
      auto update = subs[e]->WaitForUpdate(v);
      ASSERT_TRUE(update.ok()) << "engine rank " << e << " v" << v << ": " << update.status().ToString();
      EXPECT_EQ(CheckFp8Engine(engine, e, subs[e]->weights(), expected), 0u) << "engine rank " << e << " v" << v;
    }
  }
}

TEST(WeightSyncPartial, PartialSumsAreReducedThenQuantisedIntoMappedFp8Engines) {
  PushPartialIntoFp8({.job = "partial-fp8-mapped", .trainer = DataParallelPartial()});
}

TEST(WeightSyncPartial, PartialSumsAreReducedThenQuantisedThroughStagingWithKOne) {
  PushPartialIntoFp8({.job = "partial-fp8-k1", .trainer = DataParallelPartial(), .k = 1, .into_mapped = false});
}

TEST(WeightSyncPartial, PartialSumsOnATwoDimensionalMeshShareBlocksAcrossReducers) {
  PushPartialIntoFp8({.job = "partial-fp8-2d",
                      .trainer = TwoDimPartial(),
                      .k = 2,
                      .into_mapped = false,
                      .direct_partial = false,
                      .sums_share_blocks = true});
}

}  // namespace
}  // namespace shardwire
