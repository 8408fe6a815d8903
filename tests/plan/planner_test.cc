// Property test of the planner against an oracle that shares no code with it: every
// shard buffer is filled element by element from a pure function of (tensor, global
// element index), the plan is applied with memcpy, and every destination byte is
// compared with what the oracle says belongs there.
#include "shardwire/planner.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

namespace shardwire {
namespace {

std::byte OracleByte(std::uint32_t tensor, std::int64_t element, std::size_t byte) {
  std::uint64_t x = (static_cast<std::uint64_t>(tensor) << 40) ^ (static_cast<std::uint64_t>(element) << 4) ^ byte;
  x ^= x >> 31; x *= 0x9E3779B97F4A7C15ull; x ^= x >> 29;
  return static_cast<std::byte>(x & 0xFF);
}

// Fills every rank buffer of `layout` by walking each shard's elements one by one.
std::vector<std::vector<std::byte>> Materialise(const Layout& layout) {
  std::vector<std::vector<std::byte>> buffers;
  for (int r = 0; r < layout.world_size(); ++r) {
    std::vector<std::byte> buf(layout.rank(r).buffer_bytes, std::byte{0});
    for (const ShardRef& s : layout.rank(r).shards) {
      const TensorSpec& spec = layout.tensors()[s.tensor];
      const std::size_t esize = DTypeSize(spec.dtype);
      const std::size_t rank = spec.shape.size();
      for (std::int64_t local = 0; local < s.box.numel(); ++local) {
        // Decompose the local index into box coordinates, then into a global index.
        std::int64_t rem = local, global = 0, gstride = 1;
        for (std::size_t d = rank; d-- > 0;) {
          const std::int64_t coord = rem % s.box.shape[d];
          rem /= s.box.shape[d];
          global += (coord + s.box.offset[d]) * gstride;
          gstride *= spec.shape[d];
        }
        for (std::size_t b = 0; b < esize; ++b) {
          buf[s.byte_offset + static_cast<std::uint64_t>(local) * esize + b] = OracleByte(s.tensor, global, b);
        }
      }
    }
    buffers.push_back(std::move(buf));
  }
  return buffers;
}

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
      if (cells * parts > world) { cuts[d] = {0, shape[d]}; continue; }
      cells *= parts;
      std::vector<std::int64_t> c{0, shape[d]};
      while (static_cast<std::int64_t>(c.size()) < parts + 1) {
        std::int64_t x = 1 + static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(std::max<std::int64_t>(1, shape[d] - 1)));
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
    case 0: return MakeFsdpLayout(tensors, 1 + static_cast<int>(rng() % 5)).value();
    case 1: {
      // TP on a dimension that divides evenly (or replicated).
      const int tp = 1 + static_cast<int>(rng() % 3);
      std::vector<int> dims;
      for (const auto& t : tensors) {
        int dim = -1;
        for (std::size_t d = 0; d < t.shape.size(); ++d) if (t.shape[d] % tp == 0 && rng() % 2) dim = static_cast<int>(d);
        dims.push_back(dim);
      }
      return MakeTpLayout(tensors, dims, tp, 1 + static_cast<int>(rng() % 2)).value();
    }
    default: return RandomLayout(rng, tensors, 1 + static_cast<int>(rng() % 6));
  }
}

void CheckPlan(const Layout& src, const Layout& dst, const TransferPlan& plan) {
  auto src_bufs = Materialise(src);
  const auto expected = Materialise(dst);
  std::vector<std::vector<std::byte>> got;
  std::vector<std::vector<int>> writes;
  for (int r = 0; r < dst.world_size(); ++r) {
    got.emplace_back(dst.rank(r).buffer_bytes, std::byte{0});
    writes.emplace_back(dst.rank(r).buffer_bytes, 0);
  }
  for (const Move& m : plan.moves()) {
    ASSERT_LT(m.src_rank, src_bufs.size());
    ASSERT_GE(m.count, 1u);
    ASSERT_LT(m.dst_group, plan.dst_groups().size());
    for (std::uint64_t k = 0; k < m.count; ++k) {
      const std::uint64_t so = m.src_offset + k * m.src_stride, dof = m.dst_offset + k * m.dst_stride;
      ASSERT_LE(so + m.length, src_bufs[m.src_rank].size());
      for (std::uint32_t d : plan.dst_groups()[m.dst_group]) {
        ASSERT_LT(d, got.size());
        ASSERT_LE(dof + m.length, got[d].size());
        std::memcpy(got[d].data() + dof, src_bufs[m.src_rank].data() + so, m.length);
        for (std::uint64_t i = 0; i < m.length; ++i) ++writes[d][dof + i];
      }
    }
  }
  for (int r = 0; r < dst.world_size(); ++r) {
    ASSERT_EQ(got[static_cast<std::size_t>(r)], expected[static_cast<std::size_t>(r)]) << "destination rank " << r;
    // Every byte that belongs to a shard is written exactly once; padding never.
    std::vector<int> want(dst.rank(r).buffer_bytes, 0);
    for (const ShardRef& s : dst.rank(r).shards) {
      const std::uint64_t n = static_cast<std::uint64_t>(s.box.numel()) * DTypeSize(dst.tensors()[s.tensor].dtype);
      for (std::uint64_t i = 0; i < n; ++i) want[s.byte_offset + i] = 1;
    }
    ASSERT_EQ(writes[static_cast<std::size_t>(r)], want) << "destination rank " << r;
  }
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

}  // namespace
}  // namespace shardwire
