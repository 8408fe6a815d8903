// CopyToReplicas (src/workflows/replica_fanout.h) against a byte-by-byte oracle that applies each
// move row by row to each destination on its own, with canaries around and between the rows.
#include "workflows/replica_fanout.h"

#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

namespace shardwire::workflows {
namespace {

constexpr std::byte kCanary{0xA5};

struct Case {
  std::vector<Move> moves;
  std::uint64_t weights_bytes = 0, scratch_bytes = 0, dst_bytes = 0;
};

// Long rows split into pieces and chunks (3 MiB + 17 B: three pieces, the last ragged), many
// short strided rows (a row-parallel shard), runs of small moves that share a piece, moves out
// of the reduction scratch, odd offsets and lengths below the streaming threshold, empty moves.
Case Mixed() {
  Case c;
  c.weights_bytes = (std::uint64_t{8} << 20) + 333;
  c.scratch_bytes = std::uint64_t{1} << 20;
  c.dst_bytes = std::uint64_t{17} << 20;
  const std::uint64_t mib = std::uint64_t{1} << 20;
  c.moves.push_back({.src_offset = 5, .dst_offset = 3, .length = 3 * mib + 17});  // long row
  // 1500 rows of 1000 B, src stride 2000 (half of each row), dst stride 1024.
  c.moves.push_back({.src_offset = 4 * mib + 1,
                     .dst_offset = 4 * mib + 7,
                     .length = 1000,
                     .count = 1500,
                     .src_stride = 2000,
                     .dst_stride = 1024});
  for (std::uint64_t i = 0; i < 40; ++i) {  // small moves: a run of them shares a piece
    c.moves.push_back({.src_offset = 7 * mib + i * 999, .dst_offset = 8 * mib + i * 1111, .length = 100 + i * 20});
  }
  c.moves.push_back({.src_offset = 7 * mib + 100, .dst_offset = 9 * mib, .length = 13});  // below kMinStreamCopyBytes
  c.moves.push_back({.src_offset = 7 * mib, .dst_offset = 9 * mib + 64, .length = 0, .count = 5});  // empty
  // Out of the scratch (plan offsets from weights_bytes on): 2 rows of 600 KiB, then one of 4 KiB.
  c.moves.push_back({.src_offset = c.weights_bytes + 11,
                     .dst_offset = 10 * mib + 1,
                     .length = 600 << 10,
                     .count = 2,
                     .src_stride = 300 << 10,
                     .dst_stride = 700 << 10});
  c.moves.push_back({.src_offset = c.weights_bytes, .dst_offset = 12 * mib, .length = 4096});
  // Many rows of 16 KiB: several rows per piece, pieces ending mid-move.
  c.moves.push_back({.src_offset = 5 * mib,
                     .dst_offset = 13 * mib,
                     .length = 16 << 10,
                     .count = 150,
                     .src_stride = 16 << 10,
                     .dst_stride = 20 << 10});
  return c;
}

std::vector<std::byte> Random(std::uint64_t n, std::uint32_t seed) {
  std::vector<std::byte> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<std::byte>(rng() & 0xFF);
  return v;
}

// The oracle: every byte of every row, one destination at a time.
void Apply(const Case& c, const std::vector<std::byte>& weights, const std::vector<std::byte>& scratch,
           std::vector<std::byte>& dst) {
  for (const Move& m : c.moves) {
    for (std::uint64_t row = 0; row < m.count; ++row) {
      for (std::uint64_t i = 0; i < m.length; ++i) {
        const std::uint64_t s = m.src_offset + row * m.src_stride + i;
        dst[m.dst_offset + row * m.dst_stride + i] = s < weights.size() ? weights[s] : scratch[s - weights.size()];
      }
    }
  }
}

class ReplicaFanout : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(ReplicaFanout, EveryReplicaGetsExactlyTheOraclesBytes) {
  const auto [replicas, workers] = GetParam();
  const Case c = Mixed();
  const std::vector<std::byte> weights = Random(c.weights_bytes, 1), scratch = Random(c.scratch_bytes, 2);
  const FanoutSource source{weights, scratch};
  ASSERT_TRUE(CheckFanoutSource(c.moves, source).ok());
  std::vector<std::vector<std::byte>> dsts(static_cast<std::size_t>(replicas),
                                           std::vector<std::byte>(c.dst_bytes, kCanary));
  // A second group, other moves into the first buffer's last MiB: groups stay apart.
  Case upper;
  upper.moves.push_back({.src_offset = 100, .dst_offset = (std::uint64_t{16} << 20) + 5, .length = 70000});
  FanoutGroup first{&c.moves, {}}, second{&upper.moves, {}};
  for (auto& d : dsts) first.destinations.push_back(d.data());
  second.destinations.push_back(dsts[0].data());
  const FanoutStats stats = CopyToReplicas({first, second}, source, static_cast<std::size_t>(workers));

  std::uint64_t bytes = 0;
  for (const Move& m : c.moves) bytes += m.bytes();
  EXPECT_EQ(stats.bytes_read, bytes + 70000);
  EXPECT_EQ(stats.bytes_written, bytes * static_cast<std::uint64_t>(replicas) + 70000);
  std::vector<std::byte> want(c.dst_bytes, kCanary);
  Apply(c, weights, scratch, want);
  for (int r = 0; r < replicas; ++r) {
    std::vector<std::byte> expect = want;
    if (r == 0) Apply(upper, weights, scratch, expect);
    // memcmp first (fast), then the first differing offset for the message.
    if (std::memcmp(expect.data(), dsts[static_cast<std::size_t>(r)].data(), c.dst_bytes) != 0) {
      std::uint64_t i = 0;
      while (expect[i] == dsts[static_cast<std::size_t>(r)][i]) ++i;
      FAIL() << "replica " << r << " differs from the oracle at byte " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(ReplicasAndWorkers, ReplicaFanout,
                         ::testing::Combine(::testing::Values(1, 2, 3), ::testing::Values(1, 3)));

TEST(ReplicaFanoutSource, AMoveReadingPastTheBufferIsRejectedNamingIt) {
  std::vector<std::byte> weights(4096), scratch(1024);
  const FanoutSource source{weights, scratch};
  EXPECT_TRUE(CheckFanoutSource({{.src_offset = 0, .length = 4096}}, source).ok());
  EXPECT_TRUE(CheckFanoutSource({{.src_offset = 4096, .length = 1024}}, source).ok()) << "the whole scratch";

  const Status past = CheckFanoutSource({{.src_offset = 0, .length = 16}, {.src_offset = 4000, .length = 97}}, source);
  EXPECT_EQ(past.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(past.message().find("move 1"), std::string::npos) << past.ToString();
  EXPECT_NE(past.message().find("shard buffer"), std::string::npos) << past.ToString();

  const Status strided = CheckFanoutSource({{.src_offset = 0, .length = 64, .count = 3, .src_stride = 2048}}, source);
  EXPECT_EQ(strided.code(), ErrorCode::kInvalidArgument) << "the third row starts at 4096";

  const Status in_scratch = CheckFanoutSource({{.src_offset = 4096 + 1000, .length = 25}}, source);
  EXPECT_EQ(in_scratch.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(in_scratch.message().find("reduction scratch"), std::string::npos) << in_scratch.ToString();

  const Status overflow =
      CheckFanoutSource({{.src_offset = 0, .length = 1, .count = 3, .src_stride = ~std::uint64_t{0} / 2}}, source);
  EXPECT_EQ(overflow.code(), ErrorCode::kInvalidArgument) << "a stride that overflows 64 bits";
}

}  // namespace
}  // namespace shardwire::workflows
