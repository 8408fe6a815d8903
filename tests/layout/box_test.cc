#include "shardwire/box.h"

#include <gtest/gtest.h>

#include <random>
#include <set>

namespace shardwire {
namespace {

// Linear row-major index of a global point inside a box (independent helper).
std::int64_t LocalIndex(const Box& b, const std::vector<std::int64_t>& p) {
  std::int64_t idx = 0;
  for (std::size_t d = 0; d < b.shape.size(); ++d) idx = idx * b.shape[d] + (p[d] - b.offset[d]);
  return idx;
}

std::vector<std::vector<std::int64_t>> Points(const Box& b) {
  std::vector<std::vector<std::int64_t>> out;
  if (b.numel() == 0) return out;
  std::vector<std::int64_t> p(b.offset.begin(), b.offset.end());
  while (true) {
    out.push_back(p);
    std::size_t d = b.shape.size();
    while (d > 0) {
      --d;
      if (++p[d] < b.offset[d] + b.shape[d]) break;
      p[d] = b.offset[d];
      if (d == 0) return out;
    }
    if (b.shape.empty()) return out;
  }
}

TEST(Box, IntersectAndSubtractPartitionExactly) {
  std::mt19937 rng(7);
  for (int iter = 0; iter < 300; ++iter) {
    const std::size_t rank = 1 + rng() % 3;
    Box a, b;
    for (std::size_t d = 0; d < rank; ++d) {
      a.offset.push_back(rng() % 4);
      a.shape.push_back(1 + rng() % 5);
      b.offset.push_back(rng() % 6);
      b.shape.push_back(1 + rng() % 5);
    }
    std::set<std::vector<std::int64_t>> in_a, in_b;
    for (auto& p : Points(a)) in_a.insert(p);
    for (auto& p : Points(b)) in_b.insert(p);
    std::set<std::vector<std::int64_t>> expect_inter, expect_diff;
    for (auto& p : in_a) (in_b.count(p) ? expect_inter : expect_diff).insert(p);

    auto inter = Intersect(a, b);
    std::set<std::vector<std::int64_t>> got_inter;
    if (inter)
      for (auto& p : Points(*inter)) got_inter.insert(p);
    EXPECT_EQ(got_inter, expect_inter);

    std::multiset<std::vector<std::int64_t>> got_diff;
    for (const Box& piece : Subtract(a, b)) {
      EXPECT_GT(piece.numel(), 0);
      for (auto& p : Points(piece)) got_diff.insert(p);
    }
    EXPECT_EQ(std::set<std::vector<std::int64_t>>(got_diff.begin(), got_diff.end()), expect_diff);
    EXPECT_EQ(got_diff.size(), expect_diff.size()) << "pieces overlap";
  }
}

TEST(Box, ContiguousRunsMatchPointwiseMapping) {
  std::mt19937 rng(11);
  for (int iter = 0; iter < 300; ++iter) {
    const std::size_t rank = rng() % 4;  // includes 0-d
    Box from, to, region;
    for (std::size_t d = 0; d < rank; ++d) {
      const std::int64_t extent = 1 + rng() % 6;
      // from and to are sub-boxes of [0, extent); region is inside both.
      const std::int64_t f0 = rng() % extent, f1 = f0 + 1 + rng() % (extent - f0);
      const std::int64_t t0 = rng() % extent, t1 = t0 + 1 + rng() % (extent - t0);
      const std::int64_t lo = std::max(f0, t0), hi = std::min(f1, t1);
      if (hi <= lo) {
        from.offset.push_back(0);
        from.shape.push_back(extent);
        to.offset.push_back(0);
        to.shape.push_back(extent);
        region.offset.push_back(0);
        region.shape.push_back(extent);
        continue;
      }
      from.offset.push_back(f0);
      from.shape.push_back(f1 - f0);
      to.offset.push_back(t0);
      to.shape.push_back(t1 - t0);
      const std::int64_t r0 = lo + rng() % (hi - lo), r1 = r0 + 1 + rng() % (hi - r0);
      region.offset.push_back(r0);
      region.shape.push_back(r1 - r0);
    }
    std::map<std::int64_t, std::int64_t> expected;  // from index -> to index
    for (auto& p : Points(region)) expected[LocalIndex(from, p)] = LocalIndex(to, p);
    std::map<std::int64_t, std::int64_t> got;
    std::int64_t runs = 0;
    ForEachContiguousRun(region, from, to, [&](std::int64_t f, std::int64_t t, std::int64_t n) {
      ++runs;
      for (std::int64_t i = 0; i < n; ++i) EXPECT_TRUE(got.emplace(f + i, t + i).second);
    });
    EXPECT_EQ(got, expected);
    EXPECT_LE(runs, region.numel());
  }
}

TEST(Box, RowParallelShardGivesOneRunPerRow) {
  // A [4, 8] tensor split on dim 1: rank 1 holds columns 4..8; every row is one run.
  Box whole = WholeBox({4, 8});
  Box shard{{0, 4}, {4, 4}};
  std::vector<std::pair<std::int64_t, std::int64_t>> runs;
  ForEachContiguousRun(shard, whole, shard, [&](std::int64_t f, std::int64_t t, std::int64_t n) {
    EXPECT_EQ(n, 4);
    runs.emplace_back(f, t);
  });
  ASSERT_EQ(runs.size(), 4u);
  EXPECT_EQ(runs[1], (std::pair<std::int64_t, std::int64_t>{12, 4}));
  // Dim-0 shards are one single run.
  int count = 0;
  Box rows{{2, 0}, {2, 8}};
  ForEachContiguousRun(rows, whole, rows, [&](std::int64_t f, std::int64_t t, std::int64_t n) {
    ++count;
    EXPECT_EQ(f, 16);
    EXPECT_EQ(t, 0);
    EXPECT_EQ(n, 16);
  });
  EXPECT_EQ(count, 1);
}

}  // namespace
}  // namespace shardwire
