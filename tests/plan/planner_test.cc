// Planner tests on hand-made and random grid layouts, checked against the byte-level
// oracle of plan_oracle.h (which shares no code with the planner).
#include "shardwire/planner.h"
#include "plan_oracle.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>
#include <set>

namespace shardwire {
namespace {

// Random layout: each tensor is cut into a grid of cells; every rank holds at most one
// cell; each cell is held by at least one rank (replicas when ranks > cells).
Layout RandomLayout(std::mt19937& rng, const std::vector<TensorSpec>& tensors, int world) {
  std::vector<std::vector<std::optional<LocalShard>>> boxes(static_cast<std::size_t>(world),
                                                            std::vector<std::optional<LocalShard>>(tensors.size()));
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    const auto& shape = tensors[t].shape;
    std::vector<std::vector<std::int64_t>> cuts(shape.size());
    std::int64_t cells = 1;
    for (std::size_t d = 0; d < shape.size(); ++d) {
      const std::int64_t parts = std::min<std::int64_t>(shape[d], 1 + rng() % 3);
      if (cells * parts > world) {
        cuts[d] = {0, shape[d]};
        continue;
      }
      cells *= parts;
      std::vector<std::int64_t> c{0, shape[d]};
      while (static_cast<std::int64_t>(c.size()) < parts + 1) {
        std::int64_t x =
            1 + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(std::max<std::int64_t>(1, shape[d] - 1)));
        if (std::find(c.begin(), c.end(), x) == c.end() && x < shape[d]) c.push_back(x);
      }
      std::sort(c.begin(), c.end());
      cuts[d] = c;
    }
    std::vector<Box> grid{Box{}};
    for (std::size_t d = 0; d < shape.size(); ++d) {
      std::vector<Box> next;
      for (const Box& g : grid) {
        for (std::size_t i = 0; i + 1 < cuts[d].size(); ++i) {
          Box b = g;
          b.offset.push_back(cuts[d][i]);
          b.shape.push_back(cuts[d][i + 1] - cuts[d][i]);
          next.push_back(b);
        }
      }
      grid = next;
    }
    std::vector<int> ranks(static_cast<std::size_t>(world));
    for (int r = 0; r < world; ++r) ranks[static_cast<std::size_t>(r)] = r;
    std::shuffle(ranks.begin(), ranks.end(), rng);
    for (std::size_t i = 0; i < ranks.size(); ++i) {
      // The first |grid| ranks cover every cell; later ones replicate cells or hold nothing.
      if (i < grid.size() || rng() % 2) boxes[static_cast<std::size_t>(ranks[i])][t] = grid[i % grid.size()];
    }
  }
  return Layout::FromShards("random", tensors, boxes).value();
}

std::vector<TensorSpec> RandomTensors(std::mt19937& rng) {
  const DType dtypes[] = {DType::kBF16, DType::kF32, DType::kF8E4M3, DType::kI64, DType::kF16};
  std::vector<TensorSpec> tensors;
  const int n = 1 + static_cast<int>(rng() % 4);
  for (int i = 0; i < n; ++i) {
    TensorSpec s{"t" + std::to_string(i), dtypes[rng() % 5], {}};
    const std::size_t rank = rng() % 4;
    for (std::size_t d = 0; d < rank; ++d) s.shape.push_back(1 + static_cast<std::int64_t>(rng() % 9));
    tensors.push_back(s);
  }
  return tensors;
}

Layout AnyLayout(std::mt19937& rng, const std::vector<TensorSpec>& tensors) {
  switch (rng() % 3) {
    case 0:
      return MakeFsdpLayout(tensors, 1 + static_cast<int>(rng() % 5)).value();
    case 1: {
      // TP on a dimension that divides evenly (or replicated).
      const int tp = 1 + static_cast<int>(rng() % 3);
      std::vector<int> dims;
      for (const auto& t : tensors) {
        int dim = -1;
        for (std::size_t d = 0; d < t.shape.size(); ++d)
          if (t.shape[d] % tp == 0 && rng() % 2) dim = static_cast<int>(d);
        dims.push_back(dim);
      }
      return MakeTpLayout(tensors, dims, tp, 1 + static_cast<int>(rng() % 2)).value();
    }
    default:
      return RandomLayout(rng, tensors, 1 + static_cast<int>(rng() % 6));
  }
}

void CheckPlan(const Layout& src, const Layout& dst, const TransferPlan& plan) {
  ASSERT_EQ(testing::CheckPlanAgainstOracle(src, dst, plan), "");
}

TEST(Planner, RandomLayoutsMatchOracle) {
  std::mt19937 rng(20261122);
  for (int iter = 0; iter < 5000; ++iter) {
    const auto tensors = RandomTensors(rng);
    const Layout src = AnyLayout(rng, tensors);
    const Layout dst = AnyLayout(rng, tensors);
    auto plan = PlanTransfer(src, dst);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    SCOPED_TRACE("case " + std::to_string(iter) + ": " + src.description() + " -> " + dst.description());
    CheckPlan(src, dst, *plan);
    if (HasFatalFailure()) return;
  }
}

// Tensors are matched by name, not by position: the destination lists them in another order
// (the planner's hash-map path; the same order takes its linear path, tested above).
TEST(Planner, TensorsInAnotherOrderAreMatchedByName) {
  std::mt19937 rng(20261205);
  int reordered = 0;
  for (int iter = 0; iter < 500; ++iter) {
    const auto tensors = RandomTensors(rng);
    auto shuffled = tensors;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    reordered += shuffled != tensors;
    const Layout src = AnyLayout(rng, tensors);
    const Layout dst = AnyLayout(rng, shuffled);
    auto plan = PlanTransfer(src, dst);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    SCOPED_TRACE("case " + std::to_string(iter) + ": " + src.description() + " -> " + dst.description());
    CheckPlan(src, dst, *plan);
    if (HasFatalFailure()) return;
  }
  EXPECT_GT(reordered, 100) << "too few cases had another order";
}

TEST(Planner, PlanIsDeterministicAndMaximallyCoalesced) {
  std::vector<TensorSpec> tensors{{"w", DType::kBF16, {8, 16}}, {"v", DType::kBF16, {16, 8}}};
  auto src = MakeFsdpLayout(tensors, 2).value();
  auto dst = MakeTpLayout(tensors, {0, 1}, 2, 1).value();
  auto a = PlanTransfer(src, dst).value();
  auto b = PlanTransfer(src, dst).value();
  EXPECT_EQ(a.moves(), b.moves());
  for (std::size_t i = 1; i < a.moves().size(); ++i) {
    const Move& p = a.moves()[i - 1];
    const Move& m = a.moves()[i];
    const bool mergeable = p.count == 1 && m.count == 1 && p.src_rank == m.src_rank && p.dst_group == m.dst_group &&
                           p.src_offset + p.length == m.src_offset && p.dst_offset + p.length == m.dst_offset;
    EXPECT_FALSE(mergeable) << "moves " << i - 1 << " and " << i;
  }
  // w [8,16] FSDP rows 0-3 on src 0 == TP rank 0's rows: one move of 4*16*2 = 128 bytes.
  EXPECT_EQ(a.moves()[0], (Move{0, a.moves()[0].dst_group, 0, 0, 128, 1, 0, 0}));
  // v [16,8] split on dim 1 for TP: source 0's 8 rows reach TP rank 0 as ONE strided
  // move of 8 runs of 4 elements (8 bytes), strides 16 bytes (source) and 8 (destination).
  EXPECT_EQ(a.moves()[1], (Move{0, a.moves()[0].dst_group, 128, 128, 8, 8, 16, 8}));
  EXPECT_EQ(a.runs_before_coalescing(), 2u + 4 * 8);  // w: 2 runs; v: 8 rows for each (source, TP rank)
  // v [16,8] split on dim 1 for TP: rows of 4 elements (8 bytes) each come from src rows.
  EXPECT_GT(a.runs_before_coalescing(), a.moves().size() - 1);
  CheckPlan(src, dst, a);
}

TEST(Planner, MismatchedLayoutsAreOneErrorListingDifferences) {
  std::vector<TensorSpec> a{{"x", DType::kBF16, {4}}, {"y", DType::kBF16, {4}}, {"z", DType::kF32, {2}}};
  std::vector<TensorSpec> b{{"x", DType::kBF16, {8}}, {"y", DType::kF32, {4}}, {"w", DType::kF32, {2}}};
  auto plan = PlanTransfer(MakeFsdpLayout(a, 1).value(), MakeFsdpLayout(b, 1).value());
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), ErrorCode::kLayoutMismatch);
  const std::string& msg = plan.status().message();
  EXPECT_NE(msg.find("differ in 4 tensor(s)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("x: source BF16[4] vs destination BF16[8]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("w is missing from the source"), std::string::npos) << msg;
  EXPECT_NE(msg.find("z is missing from the destination"), std::string::npos) << msg;
}

TEST(Planner, UncoveredDestinationIsAnError) {
  std::vector<TensorSpec> t{{"x", DType::kF32, {8}}};
  std::vector<std::vector<std::optional<LocalShard>>> boxes{{Box{{0}, {4}}}};
  auto src = Layout::FromShards("half", t, boxes).value();
  auto plan = PlanTransfer(src, MakeFsdpLayout(t, 1).value());
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("[4:8] of x"), std::string::npos) << plan.status().message();
}

TEST(Planner, ReplicatedSourcesShareTheSending) {
  // Two identical TP=1 replicas as sources, FSDP=4 destination: each source sends half.
  std::vector<TensorSpec> t{{"x", DType::kF32, {64, 4}}};
  auto src = MakeTpLayout(t, {-1}, 1, 2).value();
  auto plan = PlanTransfer(src, MakeFsdpLayout(t, 4).value()).value();
  std::uint64_t sent[2] = {0, 0};
  for (const Move& m : plan.moves()) sent[m.src_rank] += m.length;
  EXPECT_EQ(sent[0], sent[1]);
  EXPECT_EQ(sent[0] + sent[1], 64u * 4 * 4);
}

// Two plans between the same worlds, scheduled as one: per round, no destination rank has more
// than K sources and no source more than K destinations across both (scheduled apart, their
// rounds overlap and a destination gets more), every bucket keeps its moves, and a pair keeps
// one round.
TEST(Planner, ScheduleJointlyBoundsPeersAcrossPlans) {
  // Each plan alone fits K = 2 in one round (two sources into destination 0); together the four
  // sources would write destination 0 at once.
  const int k = 2;
  auto one_round = [](std::uint32_t first_src) {
    std::vector<Move> moves;
    std::vector<Bucket> buckets;
    for (std::uint32_t s = first_src; s < first_src + 2; ++s) {
      buckets.push_back({.src_rank = s, .dst_group = 0, .first_move = moves.size(), .move_count = 1, .bytes = 64});
      moves.push_back({.src_rank = s, .dst_group = 0, .src_offset = 0, .dst_offset = 64 * s, .length = 64});
    }
    return TransferPlan(4, 1, {{0}}, std::move(moves), std::move(buckets), 2);
  };
  TransferPlan p1 = one_round(0), p2 = one_round(2);
  TransferPlan* const plans[] = {&p1, &p2};
  // Most sources of one destination, and most destinations of one source, in one round.
  auto most_peers = [&] {
    std::map<std::pair<std::uint32_t, std::uint32_t>, std::set<std::uint32_t>> sources, destinations;
    for (const TransferPlan* p : plans) {
      for (const Bucket& bucket : p->buckets()) {
        for (std::uint32_t d : p->dst_groups()[bucket.dst_group]) {
          sources[{bucket.round, d}].insert(bucket.src_rank);
          destinations[{bucket.round, bucket.src_rank}].insert(d);
        }
      }
    }
    std::size_t most = 0;
    for (const auto& [key, set] : sources) most = std::max(most, set.size());
    for (const auto& [key, set] : destinations) most = std::max(most, set.size());
    return most;
  };
  ASSERT_GT(most_peers(), static_cast<std::size_t>(k)) << "scheduled apart, the plans' rounds overlap";
  const TransferPlan before = p1;
  ASSERT_TRUE(ScheduleJointly(plans, k).ok());
  EXPECT_LE(most_peers(), static_cast<std::size_t>(k));
  for (const TransferPlan* p : plans) {
    std::map<std::pair<std::uint32_t, std::uint32_t>, std::set<std::uint32_t>> pair_rounds;
    for (const Bucket& bucket : p->buckets()) pair_rounds[{bucket.src_rank, bucket.dst_group}].insert(bucket.round);
    for (const auto& [pair, rounds] : pair_rounds) EXPECT_EQ(rounds.size(), 1u) << "a pair spans rounds";
  }
  EXPECT_EQ(p1.moves(), before.moves());
  ASSERT_EQ(p1.buckets().size(), before.buckets().size());
  for (std::size_t i = 0; i < before.buckets().size(); ++i) {
    EXPECT_EQ(p1.buckets()[i].first_move, before.buckets()[i].first_move);
    EXPECT_EQ(p1.buckets()[i].bytes, before.buckets()[i].bytes);
  }

  EXPECT_EQ(ScheduleJointly(plans, 0).code(), ErrorCode::kInvalidArgument);
  const std::vector<TensorSpec> b = {{"c", DType::kF32, {128, 16}}};
  auto other = PlanTransfer(MakeFsdpLayout(b, 2).value(), MakeTpLayout(b, {0}, 2, 1).value(), {});
  ASSERT_TRUE(other.ok());
  TransferPlan* const mismatched[] = {&p1, &*other};
  const Status st = ScheduleJointly(mismatched, k);
  EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(st.message().find("differ"), std::string::npos) << st.ToString();
}

}  // namespace
}  // namespace shardwire
