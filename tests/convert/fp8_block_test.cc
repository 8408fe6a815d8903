// FP8 E4M3 128x128 block quantisation against the numpy oracle (tests/convert/convert_oracle.py,
// an independent numpy transcription of DeepGEMM's per_block_cast_to_fp8 with its own E4M3
// rounding by nearest-value search): FP8 bytes and scale_inv bits must be identical. Data mixes
// normal values of very different magnitudes per block, zeros, subnormals, all-zero blocks, huge
// values and partial edge blocks; 2-D and 3-D (expert) tensors; bf16, fp16 and fp32 input; both
// scale arithmetics and UE8M0 scales.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <limits>
#include <vector>

#include "convert/oracle_util.h"
#include "shardwire/cast.h"
#include "shardwire/fp8_block.h"

namespace shardwire {
namespace {

using testing::ReadRaw;
using testing::RunOracle;
using testing::TempDir;
using testing::WriteRaw;

// fp32 values [E, m, n]: each 128x128 block gets its own magnitude (including all-zero blocks,
// huge and tiny ones), with zeros and tiny values sprinkled in.
std::vector<float> MakeValues(std::int64_t e, std::int64_t m, std::int64_t n, float huge, float tiny, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float magnitudes[] = {1.0f, 0.02f, 300.0f, 0.0f, huge, 1e-3f, tiny * 1000.0f, 7.5f};
  std::vector<float> v(static_cast<std::size_t>(e * m * n));
  for (std::int64_t x = 0; x < e; ++x) {
    for (std::int64_t i = 0; i < m; ++i) {
      for (std::int64_t j = 0; j < n; ++j) {
        const float mag = magnitudes[(x * 5 + (i / 128) * 3 + (j / 128)) % 8];
        float val = normal(rng) * mag;
        const unsigned r = rng() % 50;
        if (r == 0) val = 0.0f;
        if (r == 1) val = -0.0f;
        if (r == 2) val = tiny * static_cast<float>(rng() % 7);  // subnormal in the source dtype
        v[static_cast<std::size_t>((x * m + i) * n + j)] = val;
      }
    }
  }
  return v;
}

// The values in `dtype`'s raw bytes (rounded by our cast; any bits are valid input).
std::vector<std::byte> Encode(const std::vector<float>& v, DType dtype) {
  std::vector<std::byte> out(v.size() * DTypeSize(dtype));
  EXPECT_TRUE(CastElements(DType::kF32, dtype, std::as_bytes(std::span(v)), out).ok());
  return out;
}

struct Quantized {
  std::vector<std::uint8_t> q;
  std::vector<float> scale_inv;
};

const char* ArithName(const Fp8BlockOptions& o) {
  return o.arithmetic == Fp8ScaleArithmetic::kTorchCuda ? "cuda" : "exact";
}

Quantized Oracle(DType dtype, std::int64_t e, std::int64_t m, std::int64_t n, const std::vector<std::byte>& raw,
                 const Fp8BlockOptions& o) {
  TempDir dir;
  WriteRaw(dir.File("in"), raw);
  const auto [code, out] = RunOracle("quant " + std::string(DTypeName(dtype)) + " " + std::to_string(e) + " " +
                                     std::to_string(m) + " " + std::to_string(n) + " " + ArithName(o) + " " +
                                     (o.scale_format == Fp8ScaleFormat::kUe8m0 ? "ue8m0" : "fp32") + " " +
                                     dir.File("in") + " " + dir.File("q") + " " + dir.File("s"));
  EXPECT_EQ(code, 0) << out;
  return {ReadRaw<std::uint8_t>(dir.File("q")), ReadRaw<float>(dir.File("s"))};
}

Quantized Ours(DType dtype, std::int64_t e, std::int64_t m, std::int64_t n, const std::vector<std::byte>& raw,
               const Fp8BlockOptions& o) {
  std::vector<std::int64_t> shape = e > 0 ? std::vector<std::int64_t>{e, m, n} : std::vector<std::int64_t>{m, n};
  auto scale_shape = Fp8BlockScaleShape(shape, o);
  EXPECT_TRUE(scale_shape.ok());
  std::int64_t ns = 1;
  for (auto d : *scale_shape) ns *= d;
  Quantized r{std::vector<std::uint8_t>(raw.size() / DTypeSize(dtype)), std::vector<float>(ns)};
  const TensorView view{TensorSpec{"model.layers.0.mlp.down_proj.weight", dtype, shape}, raw};
  const Status s = QuantizeFp8BlockTensor(view, r.q, r.scale_inv, o);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return r;
}

void ExpectSame(const Quantized& ours, const Quantized& oracle) {
  ASSERT_EQ(ours.q.size(), oracle.q.size());
  ASSERT_EQ(ours.scale_inv.size(), oracle.scale_inv.size());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < ours.q.size(); ++i) {
    if (ours.q[i] != oracle.q[i] && ++bad <= 5) {
      ADD_FAILURE() << "fp8 byte " << i << ": ours 0x" << std::hex << int(ours.q[i]) << " oracle 0x"
                    << int(oracle.q[i]);
    }
  }
  for (std::size_t i = 0; i < ours.scale_inv.size(); ++i) {
    if (std::memcmp(&ours.scale_inv[i], &oracle.scale_inv[i], 4) != 0 && ++bad <= 10) {
      ADD_FAILURE() << "scale " << i << ": ours " << ours.scale_inv[i] << " oracle " << oracle.scale_inv[i];
    }
  }
  EXPECT_EQ(bad, 0u);
}

void RoundTrip(DType dtype, std::int64_t e, std::int64_t m, std::int64_t n, const Fp8BlockOptions& o, float huge,
               float tiny, unsigned seed) {
  // The only oracle sharing no code with the kernels: scripts/install-deps.sh installs numpy, so
  // its absence is a failure, not a skip.
  ASSERT_TRUE(testing::HaveNumpy()) << "/usr/bin/python3 with numpy is needed for the oracle";
  const auto raw = Encode(MakeValues(std::max<std::int64_t>(e, 1), m, n, huge, tiny, seed), dtype);
  const Quantized oracle = Oracle(dtype, e, m, n, raw, o);
  for (convert::KernelIsa isa : testing::KernelPaths()) {
    testing::ScopedKernelPath path(isa);
    SCOPED_TRACE(std::string("kernel path ") + convert::Kernels().name);
    ExpectSame(Ours(dtype, e, m, n, raw, o), oracle);
  }
}

constexpr float kBf16Huge = 1e37f, kBf16Tiny = 1e-39f;  // bf16 subnormals are below 1.18e-38
constexpr float kF16Huge = 20000.0f, kF16Tiny = 1e-7f;  // fp16 subnormals are below 6.1e-5

TEST(Fp8Block, Bf16PartialBlocksMatchDeepGemmOnCuda) {
  RoundTrip(DType::kBF16, 0, 300, 520, {}, kBf16Huge, kBf16Tiny, 1);
}

TEST(Fp8Block, Bf16ExactDivisionVariantMatchesOracle) {
  Fp8BlockOptions o;
  o.arithmetic = Fp8ScaleArithmetic::kExactDivision;
  RoundTrip(DType::kBF16, 0, 300, 520, o, kBf16Huge, kBf16Tiny, 2);
}

TEST(Fp8Block, ArithmeticVariantsReallyDiffer) {
  // On random amax values the two arithmetics disagree in the last bit of some scales: the
  // test data above would catch a swapped mode.
  const auto raw = Encode(MakeValues(1, 1024, 1024, 1.0f, 1e-3f, 3), DType::kF32);
  Fp8BlockOptions exact;
  exact.arithmetic = Fp8ScaleArithmetic::kExactDivision;
  const auto a = Ours(DType::kF32, 0, 1024, 1024, raw, {});
  const auto b = Ours(DType::kF32, 0, 1024, 1024, raw, exact);
  int differ = 0;
  for (std::size_t i = 0; i < a.scale_inv.size(); ++i) differ += a.scale_inv[i] != b.scale_inv[i];
  EXPECT_GT(differ, 0);
}

TEST(Fp8Block, Ue8m0ScalesArePowersOfTwoAndMatchOracle) {
  Fp8BlockOptions o;
  o.scale_format = Fp8ScaleFormat::kUe8m0;
  RoundTrip(DType::kBF16, 0, 260, 300, o, kBf16Huge, kBf16Tiny, 4);
  const auto raw = Encode(MakeValues(1, 260, 300, kBf16Huge, kBf16Tiny, 4), DType::kBF16);
  for (float s : Ours(DType::kBF16, 0, 260, 300, raw, o).scale_inv) {
    int exp = 0;
    EXPECT_EQ(std::frexp(s, &exp), 0.5f) << s;
  }
  o.arithmetic = Fp8ScaleArithmetic::kExactDivision;
  RoundTrip(DType::kBF16, 0, 260, 300, o, kBf16Huge, kBf16Tiny, 5);
}

TEST(Fp8Block, F16InputMatchesOracle) { RoundTrip(DType::kF16, 0, 257, 129, {}, kF16Huge, kF16Tiny, 6); }
TEST(Fp8Block, F32InputMatchesOracle) { RoundTrip(DType::kF32, 0, 129, 385, {}, 3e37f, 1e-42f, 7); }
TEST(Fp8Block, ExpertTensorScalesPerExpert) { RoundTrip(DType::kBF16, 3, 130, 260, {}, kBf16Huge, kBf16Tiny, 8); }
TEST(Fp8Block, ExactMultiplesOf128) { RoundTrip(DType::kBF16, 0, 256, 384, {}, kBf16Huge, kBf16Tiny, 9); }
TEST(Fp8Block, SmallerThanOneBlock) { RoundTrip(DType::kBF16, 0, 3, 5, {}, kBf16Huge, kBf16Tiny, 10); }

TEST(Fp8Block, SlabsOfBlockRowsEqualTheWholeMatrix) {
  const std::int64_t m = 300, n = 200;
  const auto raw = Encode(MakeValues(1, m, n, 5.0f, kBf16Tiny, 11), DType::kBF16);
  const auto whole = Ours(DType::kBF16, 0, m, n, raw, {});
  std::vector<std::uint8_t> q(m * n);
  std::vector<float> s(3 * 2);
  const std::int64_t splits[] = {0, 128, 256, 300};
  for (int k = 0; k < 3; ++k) {
    const std::int64_t r0 = splits[k], r1 = splits[k + 1];
    const Status st = QuantizeFp8BlockRows(DType::kBF16, std::span(raw).subspan(r0 * n * 2, (r1 - r0) * n * 2), r1 - r0,
                                           n, std::span(q).subspan(r0 * n, (r1 - r0) * n),
                                           std::span(s).subspan(k * 2, 2), {}, {"w", r0, -1});
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  EXPECT_EQ(q, whole.q);
  EXPECT_EQ(s, whole.scale_inv);
}

TEST(Fp8Block, AllZeroBlockUsesTheClampedAmax) {
  std::vector<std::byte> raw(130 * 2 * 2, std::byte{0});  // bf16 zeros [130, 2]
  std::vector<std::uint8_t> q(260, 0xAA);
  std::vector<float> s(2);
  ASSERT_TRUE(QuantizeFp8BlockRows(DType::kBF16, raw, 130, 2, q, s, {}, {"z"}).ok());
  for (auto b : q) EXPECT_EQ(b, 0);
  EXPECT_EQ(s[0], 1e-4f * static_cast<float>(1.0 / 448.0));
}

TEST(Fp8Block, NanAndInfAreTypedErrorsNamingTensorAndElement) {
  std::vector<float> v(200 * 130, 1.0f);
  v[129 * 130 + 7] = NAN;
  auto raw = Encode(v, DType::kBF16);
  std::vector<std::uint8_t> q(v.size());
  std::vector<float> s(2 * 2);
  const TensorView view{TensorSpec{"layers.3.attn.o_proj.weight", DType::kBF16, {200, 130}}, raw};
  Status st = QuantizeFp8BlockTensor(view, q, s, {});
  EXPECT_EQ(st.code(), ErrorCode::kCorruptData);
  EXPECT_NE(st.message().find("layers.3.attn.o_proj.weight"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("element [129, 7] is NaN"), std::string::npos) << st.message();

  std::vector<float> e(3 * 4 * 5, 0.5f);
  e[2 * 20 + 3 * 5 + 4] = -INFINITY;
  const auto raw3 = Encode(e, DType::kF32);
  std::vector<std::uint8_t> q3(e.size());
  std::vector<float> s3(3);
  const TensorView experts{TensorSpec{"experts.w13", DType::kF32, {3, 4, 5}}, raw3};
  st = QuantizeFp8BlockTensor(experts, q3, s3, {});
  EXPECT_EQ(st.code(), ErrorCode::kCorruptData);
  EXPECT_NE(st.message().find("expert 2, element [3, 4] is -inf"), std::string::npos) << st.message();
}

TEST(Fp8Block, ShapeAndBufferErrors) {
  std::vector<std::byte> raw(16);
  std::vector<std::uint8_t> q(8);
  std::vector<float> s(1);
  const TensorView bias{TensorSpec{"b", DType::kBF16, {8}}, raw};
  Status st = QuantizeFp8BlockTensor(bias, q, s, {});
  EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(st.message().find("tensor \"b\""), std::string::npos) << st.message();
  st = QuantizeFp8BlockRows(DType::kBF16, raw, 2, 4, std::span(q).first(7), s, {}, {"w"});
  EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument);
  st = QuantizeFp8BlockRows(DType::kI32, std::span(raw).first(8), 1, 2, std::span(q).first(2), s, {}, {"w"});
  EXPECT_EQ(st.code(), ErrorCode::kUnsupported);
  auto shape = Fp8BlockScaleShape({7168, 576}, {});
  ASSERT_TRUE(shape.ok());
  EXPECT_EQ(*shape, (std::vector<std::int64_t>{56, 5}));
  shape = Fp8BlockScaleShape({256, 4096, 7168}, {});
  EXPECT_EQ(*shape, (std::vector<std::int64_t>{256, 32, 56}));
  // A zero-element tensor may have a huge other dimension: its scale grid is rounded up without
  // the signed overflow of (d + 127) / 128 (it came out negative).
  shape = Fp8BlockScaleShape({0, std::numeric_limits<std::int64_t>::max()}, {});
  ASSERT_TRUE(shape.ok()) << shape.status().ToString();
  EXPECT_EQ(*shape, (std::vector<std::int64_t>{0, std::int64_t{1} << 56}));
}

TEST(Fp8Block, DequantisationMatchesOracle) {
  // The only oracle sharing no code with the kernels: scripts/install-deps.sh installs numpy, so
  // its absence is a failure, not a skip.
  ASSERT_TRUE(testing::HaveNumpy()) << "/usr/bin/python3 with numpy is needed for the oracle";
  const std::int64_t e = 2, m = 150, n = 140;
  const auto raw = Encode(MakeValues(e, m, n, 50.0f, kBf16Tiny, 12), DType::kBF16);
  const auto qs = Ours(DType::kBF16, e, m, n, raw, {});
  std::vector<float> deq(e * m * n);
  ASSERT_TRUE(
      DequantizeFp8Block(qs.q, qs.scale_inv, {e, m, n}, DType::kF32, std::as_writable_bytes(std::span(deq)), {}).ok());
  TempDir dir;
  WriteRaw(dir.File("q"), qs.q);
  WriteRaw(dir.File("s"), qs.scale_inv);
  const auto [code, out] = RunOracle("dequant 2 150 140 " + dir.File("q") + " " + dir.File("s") + " " + dir.File("d"));
  ASSERT_EQ(code, 0) << out;
  const auto expected = ReadRaw<float>(dir.File("d"));
  ASSERT_EQ(expected.size(), deq.size());
  EXPECT_EQ(std::memcmp(expected.data(), deq.data(), deq.size() * 4), 0);
  // And the round trip is close: |x - deq| <= 2^-4 |x| + half the smallest subnormal step.
  std::vector<float> x(deq.size());
  ASSERT_TRUE(CastElements(DType::kBF16, DType::kF32, raw, std::as_writable_bytes(std::span(x))).ok());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float step = qs.scale_inv[(i / (m * n)) * 4 + ((i / n) % m) / 128 * 2 + (i % n) / 128];
    ASSERT_LE(std::fabs(x[i] - deq[i]), std::fabs(x[i]) * 0.0625f + step * 0x1p-10f + 1e-30f) << i;
  }
}

}  // namespace
}  // namespace shardwire
