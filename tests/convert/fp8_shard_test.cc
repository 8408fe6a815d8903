// Sharded FP8 block quantisation (Fp8ShardBlockAmax + QuantizeFp8Shard): a matrix split into
// shards at edges that are not multiples of 128 (FSDP's torch.chunk rows, TP columns, both),
// each shard quantised with the max of every shard's partial amax, must reassemble byte for byte
// into the whole-matrix quantisation of QuantizeFp8BlockTensor (itself checked bit for bit
// against the independent numpy oracle in fp8_block_test.cc). Scales: every block owned by
// exactly one shard, with the whole-matrix scale.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "oracle_util.h"
#include "shardwire/cast.h"
#include "shardwire/fp8_block.h"

namespace shardwire {
namespace {

// bf16 bytes of an [m, n] matrix: block magnitudes from 1e-3 to 1e4, zeros, subnormals, one all-zero block.
std::vector<std::byte> MakeMatrix(std::int64_t m, std::int64_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float mags[] = {1.0f, 1e-3f, 300.0f, 0.0f, 1e4f, 7.5f};
  std::vector<float> v(static_cast<std::size_t>(m * n));
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      float x = normal(rng) * mags[((i / 128) * 5 + j / 128) % 6];
      if (rng() % 40 == 0) x = 0.0f;
      if (rng() % 97 == 0) x = 1e-40f;  // subnormal: bf16 keeps it as a subnormal or zero
      v[static_cast<std::size_t>(i * n + j)] = x;
    }
  }
  std::vector<std::byte> out(v.size() * 2);
  EXPECT_TRUE(CastElements(DType::kF32, DType::kBF16, std::as_bytes(std::span(v)), out).ok());
  return out;
}

struct Split {
  std::vector<std::int64_t> row_cuts, col_cuts;  // interior cut points
};

void CheckSplitOnce(std::int64_t m, std::int64_t n, const Split& split, Fp8BlockOptions o) {
  SCOPED_TRACE(::testing::Message() << m << "x" << n << " block " << o.block_rows << "x" << o.block_cols);
  const auto src = MakeMatrix(m, n, static_cast<unsigned>(m * 31 + n));
  const TensorSpec spec{"w", DType::kBF16, {m, n}};
  const auto scale_shape = Fp8BlockScaleShape({m, n}, o).value();
  std::vector<std::uint8_t> want_q(static_cast<std::size_t>(m * n));
  std::vector<float> want_s(static_cast<std::size_t>(scale_shape[0] * scale_shape[1]));
  ASSERT_TRUE(QuantizeFp8BlockTensor(TensorView{spec, src}, want_q, want_s, o).ok());

  std::vector<std::int64_t> rc{0}, cc{0};
  rc.insert(rc.end(), split.row_cuts.begin(), split.row_cuts.end());
  cc.insert(cc.end(), split.col_cuts.begin(), split.col_cuts.end());
  rc.push_back(m);
  cc.push_back(n);
  std::vector<Fp8ShardBox> boxes;
  for (std::size_t a = 0; a + 1 < rc.size(); ++a)
    for (std::size_t b = 0; b + 1 < cc.size(); ++b)
      boxes.push_back({rc[a], rc[a + 1] - rc[a], cc[b], cc[b + 1] - cc[b]});
  auto shard_bytes = [&](const Fp8ShardBox& b) {
    std::vector<std::byte> out(static_cast<std::size_t>(b.rows * b.cols) * 2);
    for (std::int64_t r = 0; r < b.rows; ++r)
      std::memcpy(out.data() + r * b.cols * 2, src.data() + ((b.row0 + r) * n + b.col0) * 2,
                  static_cast<std::size_t>(b.cols) * 2);
    return out;
  };
  // Step 1 on every shard; the block amax is the max over shards (what BLOCK_AMAX exchanges do).
  std::map<std::pair<std::int64_t, std::int64_t>, float> block_amax;
  for (const Fp8ShardBox& b : boxes) {
    const Fp8BlockRange t = Fp8BlocksTouched(b, o);
    std::vector<float> partial(static_cast<std::size_t>(t.count()));
    ASSERT_TRUE(Fp8ShardBlockAmax(DType::kBF16, shard_bytes(b), b, partial, o, {"w"}).ok());
    for (std::int64_t i = t.row_begin; i < t.row_end; ++i)
      for (std::int64_t j = t.col_begin; j < t.col_end; ++j) {
        float& a = block_amax[{i, j}];
        a = std::max(
            a, partial[static_cast<std::size_t>((i - t.row_begin) * (t.col_end - t.col_begin) + j - t.col_begin)]);
      }
  }
  std::vector<std::uint8_t> got_q(want_q.size(), 0xAA);
  std::vector<int> owners(want_s.size(), 0);
  std::vector<float> got_s(want_s.size(), -1.0f);
  for (const Fp8ShardBox& b : boxes) {
    const Fp8BlockRange t = Fp8BlocksTouched(b, o), own = Fp8BlocksOwned(b, o);
    std::vector<float> amax;
    for (std::int64_t i = t.row_begin; i < t.row_end; ++i)
      for (std::int64_t j = t.col_begin; j < t.col_end; ++j) amax.push_back(block_amax[{i, j}]);
    std::vector<std::uint8_t> q(static_cast<std::size_t>(b.rows * b.cols));
    std::vector<float> s(static_cast<std::size_t>(own.count()));
    const Status st = QuantizeFp8Shard(DType::kBF16, shard_bytes(b), b, amax, q, s, o, {"w"});
    ASSERT_TRUE(st.ok()) << st.ToString();
    for (std::int64_t r = 0; r < b.rows; ++r)
      std::memcpy(got_q.data() + (b.row0 + r) * n + b.col0, q.data() + r * b.cols, static_cast<std::size_t>(b.cols));
    for (std::int64_t i = own.row_begin; i < own.row_end; ++i)
      for (std::int64_t j = own.col_begin; j < own.col_end; ++j) {
        const auto k = static_cast<std::size_t>(i * scale_shape[1] + j);
        ++owners[k];
        got_s[k] = s[static_cast<std::size_t>((i - own.row_begin) * (own.col_end - own.col_begin) + j - own.col_begin)];
      }
  }
  EXPECT_EQ(got_q, want_q);
  EXPECT_EQ(std::count(owners.begin(), owners.end(), 1), static_cast<long>(owners.size())) << "each block owned once";
  EXPECT_EQ(0, std::memcmp(got_s.data(), want_s.data(), want_s.size() * sizeof(float)));
}

// The shards' bytes equal the whole matrix's on every kernel path (each path's whole-matrix
// result is itself checked against the oracle in fp8_block_test.cc).
void CheckSplit(std::int64_t m, std::int64_t n, const Split& split, Fp8BlockOptions o) {
  for (convert::KernelIsa isa : testing::KernelPaths()) {
    testing::ScopedKernelPath path(isa);
    SCOPED_TRACE(std::string("kernel path ") + convert::Kernels().name);
    CheckSplitOnce(m, n, split, o);
  }
}

TEST(Fp8Shard, FsdpRowsAtNonMultiplesOf128) {
  CheckSplit(512, 384, {{171, 342}, {}}, {});  // torch.chunk(512, 3)
  CheckSplit(300, 260, {{100, 200}, {}}, {});  // partial edge blocks in both dims
}

TEST(Fp8Shard, TpColumnsAndGridSplits) {
  CheckSplit(256, 640, {{}, {320}}, {});  // columns split mid-block
  CheckSplit(385, 390, {{1, 129, 250}, {64, 200, 389}}, {});
}

TEST(Fp8Shard, Ue8m0AndExactDivisionAndSmallBlocks) {
  Fp8BlockOptions ue8m0;
  ue8m0.scale_format = Fp8ScaleFormat::kUe8m0;
  CheckSplit(256, 256, {{77}, {130}}, ue8m0);
  Fp8BlockOptions exact;
  exact.arithmetic = Fp8ScaleArithmetic::kExactDivision;
  exact.block_rows = 32;
  exact.block_cols = 16;
  CheckSplit(100, 70, {{33, 60}, {17}}, exact);
}

TEST(Fp8Shard, NonFiniteInputAndBadAmaxAreTypedErrors) {
  Fp8BlockOptions o;
  const Fp8ShardBox b{130, 4, 0, 8};
  std::vector<float> v(32, 1.0f);
  v[13] = INFINITY;
  std::vector<std::byte> src(64);
  ASSERT_TRUE(CastElements(DType::kF32, DType::kBF16, std::as_bytes(std::span(v)), src).ok());
  std::vector<float> amax(1);
  const Status st = Fp8ShardBlockAmax(DType::kBF16, src, b, amax, o, {"layers.3.w"});
  EXPECT_EQ(st.code(), ErrorCode::kCorruptData);
  EXPECT_NE(st.message().find("layers.3.w"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("[131, 5]"), std::string::npos) << st.ToString();  // matrix coordinates
  v[13] = 1.0f;
  ASSERT_TRUE(CastElements(DType::kF32, DType::kBF16, std::as_bytes(std::span(v)), src).ok());
  std::vector<std::uint8_t> q(32);
  std::vector<float> s(0);  // block [1, 0] starts at row 128: not owned by rows 130..133
  const float bad[] = {NAN};
  EXPECT_EQ(QuantizeFp8Shard(DType::kBF16, src, b, bad, q, s, o, {"w"}).code(), ErrorCode::kCorruptData);
  const float fine[] = {2.0f};
  EXPECT_TRUE(QuantizeFp8Shard(DType::kBF16, src, b, fine, q, s, o, {"w"}).ok());
  EXPECT_EQ(QuantizeFp8Shard(DType::kBF16, src, b, fine, std::span(q).first(31), s, o, {"w"}).code(),
            ErrorCode::kInvalidArgument);
}

}  // namespace
}  // namespace shardwire
