// Dividing a transfer's slices among lanes (src/transport/lane_division.h), alone
// and after slicing (CutIntoBlocks, strided_rows.h): what PrepareTransfer does,
// without UCX. Oracles: the byte positions a descriptor moves, walked row by
// row, and the bound each lane must respect, computed here independently.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

#include "shardwire/agent.h"
#include "transport/lane_division.h"
#include "transport/strided_rows.h"

namespace shardwire {
namespace {

using transport::CutIntoBlocks;
using transport::DivideAmongLanes;
using transport::RowBlock;

// Bytes per lane of an assignment.
std::vector<std::uint64_t> LaneBytes(const std::vector<std::uint64_t>& sizes, const std::vector<std::uint32_t>& lane_of,
                                     std::uint32_t lanes) {
  std::vector<std::uint64_t> out(lanes, 0);
  for (std::size_t i = 0; i < sizes.size(); ++i) out.at(lane_of.at(i)) += sizes[i];
  return out;
}

// The properties every assignment has (lane_division.h): one lane per slice, in
// range; a transfer of at most `one_lane_max` bytes, or one whose slices before the last
// do not fill a share of ceil(total / lanes), on lane id % lanes; otherwise lanes never
// decrease along the slices from lane 0, at least two are used, and each lane holds at most
// ceil(total / lanes) + the largest slice (the last lane at most ceil(total / lanes)).
void ExpectWellDivided(const std::vector<std::uint64_t>& sizes, std::uint64_t one_lane_max, std::uint32_t lanes,
                       std::uint64_t id, const std::string& what) {
  const std::vector<std::uint32_t> lane_of = DivideAmongLanes(sizes, one_lane_max, lanes, id);
  ASSERT_EQ(lane_of.size(), sizes.size()) << what;
  std::uint64_t total = 0, largest = 0;
  for (std::uint64_t s : sizes) {
    total += s;
    largest = std::max(largest, s);
  }
  for (std::uint32_t l : lane_of) ASSERT_LT(l, lanes) << what;
  if (total <= one_lane_max) {
    for (std::uint32_t l : lane_of) EXPECT_EQ(l, id % lanes) << what;
    return;
  }
  const std::uint64_t share = (total + lanes - 1) / lanes;
  if (total - sizes.back() < share) {  // no share filled before the last slice: nothing to divide
    for (std::uint32_t l : lane_of) EXPECT_EQ(l, id % lanes) << what << " (undividable)";
    return;
  }
  for (std::size_t i = 1; i < lane_of.size(); ++i) EXPECT_LE(lane_of[i - 1], lane_of[i]) << what << " slice " << i;
  EXPECT_EQ(lane_of.front(), 0u) << what;
  EXPECT_GT(lane_of.back(), 0u) << what << ": a dividable transfer used one lane";
  const std::vector<std::uint64_t> bytes = LaneBytes(sizes, lane_of, lanes);
  for (std::uint32_t l = 0; l < lanes; ++l) {
    EXPECT_LE(bytes[l], share + largest) << what << " lane " << l;
  }
  EXPECT_LE(bytes[lanes - 1], share) << what << " last lane";
}

TEST(LaneDivision, EqualSlicesAreSplitEvenlyInContiguousRuns) {
  // 64 slices of 1 MiB over 4 lanes: 16 each, in order.
  const std::vector<std::uint64_t> sizes(64, 1 << 20);
  const std::vector<std::uint32_t> lane_of = DivideAmongLanes(sizes, 1 << 20, 4, 7);
  for (std::size_t i = 0; i < sizes.size(); ++i) EXPECT_EQ(lane_of[i], i / 16) << "slice " << i;
  // 10 slices over 3 lanes: 4 + 3 + 3 (share = ceil(10/3) = 4 slices).
  const std::vector<std::uint64_t> ten(10, 4096);
  EXPECT_EQ(LaneBytes(ten, DivideAmongLanes(ten, 4096, 3, 0), 3), (std::vector<std::uint64_t>{4 * 4096, 3 * 4096, 3 * 4096}));
}

TEST(LaneDivision, ATransferUpToTheOneLaneLimitStaysOnTheLaneOfItsId) {
  const std::vector<std::uint64_t> small{100, 200, 300};  // 600 bytes <= the one-lane limit 1000
  for (std::uint64_t id = 0; id < 8; ++id) {
    const std::vector<std::uint32_t> lane_of = DivideAmongLanes(small, 1000, 4, id);
    EXPECT_EQ(lane_of, (std::vector<std::uint32_t>(3, static_cast<std::uint32_t>(id % 4)))) << "id " << id;
  }
  // Exactly the limit is still "at most".
  EXPECT_EQ(DivideAmongLanes(std::vector<std::uint64_t>{1000}, 1000, 4, 3), (std::vector<std::uint32_t>{3}));
  // One byte more spreads from lane 0.
  EXPECT_EQ(DivideAmongLanes(std::vector<std::uint64_t>{1000, 1}, 1000, 4, 3), (std::vector<std::uint32_t>{0, 1}));
  EXPECT_TRUE(DivideAmongLanes({}, 1000, 4, 3).empty());
}

// A transfer above the one-lane limit that cannot be divided (one slice of 600 KiB at the
// default 1 MiB slice, or a tiny slice before a large one) alternates lanes with its id like a
// small one, instead of always taking lane 0 (found by review, session 35).
TEST(LaneDivision, AnUndividableTransferTakesTheLaneOfItsId) {
  const std::uint64_t one_lane = transport::OneLaneMaxBytes(std::uint64_t{1} << 20);
  const std::vector<std::uint64_t> one{600 << 10};
  const std::vector<std::uint64_t> tiny_then_large{100, 900 << 10};
  for (std::uint64_t id = 0; id < 6; ++id) {
    const auto lane = static_cast<std::uint32_t>(id % 2);
    EXPECT_EQ(DivideAmongLanes(one, one_lane, 2, id), (std::vector<std::uint32_t>{lane})) << "id " << id;
    EXPECT_EQ(DivideAmongLanes(tiny_then_large, one_lane, 2, id), (std::vector<std::uint32_t>{lane, lane}))
        << "id " << id;
  }
  // Two equal slices above the limit are still divided, from lane 0 whatever the id.
  const std::vector<std::uint64_t> two(2, 400 << 10);
  EXPECT_EQ(DivideAmongLanes(two, one_lane, 2, 1), (std::vector<std::uint32_t>{0, 1}));
}

// What PrepareTransfer passes (OneLaneMaxBytes): at the default 1 MiB slice, a post of 64 x 16 KiB
// (1 MiB) is split over both lanes, 32 descriptors each, while 64 x 4 KiB (256 KiB) and anything
// up to 512 KiB stays on one lane.
TEST(LaneDivision, PostsAboveHalfASliceAreSplitOverTheLanes) {
  const std::uint64_t slice = AgentOptions{}.slice_bytes;
  ASSERT_EQ(slice, std::uint64_t{1} << 20);
  const std::uint64_t one_lane = transport::OneLaneMaxBytes(slice);
  EXPECT_EQ(one_lane, std::uint64_t{512} << 10);
  const std::vector<std::uint64_t> sixteen(64, 16 << 10);
  std::vector<std::uint32_t> halves(64, 0);
  std::fill(halves.begin() + 32, halves.end(), 1u);
  EXPECT_EQ(DivideAmongLanes(sixteen, one_lane, 2, 5), halves);
  const std::vector<std::uint64_t> four(64, 4 << 10);
  EXPECT_EQ(DivideAmongLanes(four, one_lane, 2, 5), std::vector<std::uint32_t>(64, 1));
  const std::vector<std::uint64_t> half(32, 16 << 10);  // exactly 512 KiB
  EXPECT_EQ(DivideAmongLanes(half, one_lane, 2, 4), std::vector<std::uint32_t>(32, 0));
}

TEST(LaneDivision, RandomSlicesRespectTheBoundOnEveryLane) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 500; ++trial) {
    const std::uint32_t lanes = 1 + static_cast<std::uint32_t>(rng() % 8);
    const std::uint64_t slice = 1 + rng() % 5000;
    std::vector<std::uint64_t> sizes(rng() % 100);
    for (auto& s : sizes) s = 1 + rng() % (rng() % 4 == 0 ? 4 * slice : slice);  // some oversized slices
    ExpectWellDivided(sizes, slice, lanes, rng() % 100, "trial " + std::to_string(trial));
  }
}

// Byte positions (remote -> local) a block moves, by walking its rows.
void AddRowBytes(const RowBlock& b, std::map<std::uint64_t, std::uint64_t>& out, bool& twice) {
  for (std::uint64_t r = 0; r < b.count; ++r)
    for (std::uint64_t k = 0; k < b.length; ++k)
      twice |= !out.emplace(b.remote_offset + r * b.remote_stride + k, b.local_offset + r * b.local_stride + k).second;
}

// PrepareTransfer's pipeline without UCX: every descriptor cut into blocks of at
// most one slice, the blocks divided among the lanes. Every byte of every
// descriptor lands in exactly one block of exactly one lane, and the lanes are
// balanced as above.
TEST(LaneDivision, SlicedDescriptorsLandOnLanesEveryByteOnce) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const std::uint64_t slice = 64 + rng() % 512;
    const std::uint32_t lanes = 1 + static_cast<std::uint32_t>(rng() % 4);
    // Descriptors on disjoint remote ranges (one per 64 KiB), like a transfer's tensors.
    std::vector<TransferDescriptor> ds(1 + rng() % 6);
    std::map<std::uint64_t, std::uint64_t> expected;
    bool twice = false;
    for (std::size_t i = 0; i < ds.size(); ++i) {
      const std::uint64_t length = 1 + rng() % 300, count = 1 + rng() % 12;
      ds[i] = {.local_offset = i * 65536 + rng() % 50,
               .remote_offset = i * 65536 + rng() % 50,
               .length = length,
               .count = count,
               .local_stride = length + rng() % 40,
               .remote_stride = length + rng() % 40};
      AddRowBytes({ds[i].local_offset, ds[i].remote_offset, length, count, ds[i].local_stride, ds[i].remote_stride},
                  expected, twice);
    }
    ASSERT_FALSE(twice);
    std::vector<RowBlock> blocks;
    for (const TransferDescriptor& d : ds) CutIntoBlocks(d, slice, /*one_row_per_block=*/false, blocks);
    std::vector<std::uint64_t> sizes;
    for (const RowBlock& b : blocks) {
      EXPECT_LE(b.bytes(), slice) << "trial " << trial;
      sizes.push_back(b.bytes());
    }
    const std::vector<std::uint32_t> lane_of = DivideAmongLanes(sizes, transport::OneLaneMaxBytes(slice), lanes, trial);
    std::vector<std::map<std::uint64_t, std::uint64_t>> per_lane(lanes);
    std::map<std::uint64_t, std::uint64_t> got;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      AddRowBytes(blocks[i], got, twice);
      AddRowBytes(blocks[i], per_lane.at(lane_of.at(i)), twice);
    }
    EXPECT_FALSE(twice) << "trial " << trial << ": a byte moved twice";
    EXPECT_EQ(got, expected) << "trial " << trial;
    std::size_t lane_total = 0;
    for (const auto& m : per_lane) lane_total += m.size();
    EXPECT_EQ(lane_total, expected.size()) << "trial " << trial;
    ExpectWellDivided(sizes, transport::OneLaneMaxBytes(slice), lanes, trial, "trial " + std::to_string(trial));
  }
}

// AnyRangesOverlap against a byte-by-byte oracle on random ranges (empty ones included), and
// the cases at the edges: touching ranges share nothing, a range inside another overlaps it,
// an overlap of two ranges that are not neighbours once sorted is found.
TEST(AnyRangesOverlap, AgreesWithAByteByByteOracle) {
  using Ranges = std::vector<std::pair<std::uint64_t, std::uint64_t>>;
  EXPECT_FALSE(transport::AnyRangesOverlap({}));
  EXPECT_FALSE(transport::AnyRangesOverlap(Ranges{{0, 10}, {10, 20}, {20, 20}, {5, 5}}));
  EXPECT_TRUE(transport::AnyRangesOverlap(Ranges{{0, 16}, {0, 16}}));
  EXPECT_TRUE(transport::AnyRangesOverlap(Ranges{{30, 40}, {0, 100}}));
  EXPECT_TRUE(transport::AnyRangesOverlap(Ranges{{0, 100}, {100, 110}, {99, 100}}));
  std::mt19937_64 rng(43);
  for (int trial = 0; trial < 2000; ++trial) {
    Ranges ranges;
    std::vector<int> covered(256, 0);
    const int n = static_cast<int>(rng() % 6);
    for (int i = 0; i < n; ++i) {
      const std::uint64_t begin = rng() % 240, length = rng() % 17;
      ranges.emplace_back(begin, begin + length);
      for (std::uint64_t b = begin; b < begin + length; ++b) ++covered[b];
    }
    const bool oracle = std::any_of(covered.begin(), covered.end(), [](int c) { return c > 1; });
    EXPECT_EQ(transport::AnyRangesOverlap(ranges), oracle) << "trial " << trial;
  }
}

}  // namespace
}  // namespace shardwire
