// Casts between bf16, fp16 and fp32 against the numpy oracle: exhaustive over all 65536 bf16 and
// fp16 bit patterns, and over 2^20 random fp32 patterns plus every bf16/fp16 rounding tie and its
// neighbours. Bits must match exactly; NaN must stay NaN with its sign (payload not compared).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "convert/oracle_util.h"
#include "shardwire/cast.h"

namespace shardwire {
namespace {

using testing::ReadRaw;
using testing::RunOracle;
using testing::TempDir;
using testing::WriteRaw;

bool IsNan(DType d, std::uint32_t bits) {
  switch (d) {
    case DType::kBF16:
      return (bits & 0x7FFFu) > 0x7F80u;
    case DType::kF16:
      return (bits & 0x7FFFu) > 0x7C00u;
    default:
      return (bits & 0x7FFFFFFFu) > 0x7F800000u;
  }
}
std::uint32_t SignOf(DType d, std::uint32_t bits) { return d == DType::kF32 ? bits >> 31 : bits >> 15; }

template <typename In>
void CheckAgainstOracle(DType from, DType to, const std::vector<In>& input) {
  // The only oracle sharing no code with the kernels: scripts/install-deps.sh installs numpy, so
  // its absence is a failure, not a skip.
  ASSERT_TRUE(testing::HaveNumpy()) << "/usr/bin/python3 with numpy is needed for the oracle";
  TempDir dir;
  WriteRaw(dir.File("in"), input);
  const std::string args = "cast " + std::string(DTypeName(from)) + " " + std::string(DTypeName(to)) + " " +
                           dir.File("in") + " " + dir.File("out");
  const auto [code, out] = RunOracle(args);
  ASSERT_EQ(code, 0) << out;
  const auto expected = ReadRaw<std::byte>(dir.File("out"));
  const std::size_t osize = DTypeSize(to);
  ASSERT_EQ(expected.size(), input.size() * osize);
  for (convert::KernelIsa isa : testing::KernelPaths()) {
    testing::ScopedKernelPath path(isa);
    SCOPED_TRACE(std::string("kernel path ") + convert::Kernels().name);
    std::vector<std::byte> got(expected.size());
    ASSERT_TRUE(CastElements(from, to, std::as_bytes(std::span(input)), got).ok());
    std::size_t mismatches = 0;
    for (std::size_t i = 0; i < input.size(); ++i) {
      std::uint32_t g = 0, e = 0;
      std::memcpy(&g, got.data() + i * osize, osize);
      std::memcpy(&e, expected.data() + i * osize, osize);
      if (g == e) continue;
      if (IsNan(to, g) && IsNan(to, e) && SignOf(to, g) == SignOf(to, e)) continue;
      if (++mismatches <= 5) {
        ADD_FAILURE() << DTypeName(from) << " -> " << DTypeName(to) << ": input 0x" << std::hex
                      << static_cast<std::uint64_t>(input[i]) << " gave 0x" << g << ", oracle 0x" << e;
      }
    }
    EXPECT_EQ(mismatches, 0u);
  }
}

std::vector<std::uint16_t> All16() {
  std::vector<std::uint16_t> v(65536);
  for (std::uint32_t i = 0; i < 65536; ++i) v[i] = static_cast<std::uint16_t>(i);
  return v;
}

std::vector<std::uint32_t> Fp32Patterns() {
  std::mt19937 rng(1234);
  std::vector<std::uint32_t> v;
  for (int i = 0; i < (1 << 20); ++i) v.push_back(rng());
  for (std::uint32_t h = 0; h < 65536; ++h) {  // bf16 ties and neighbours
    for (std::uint32_t low : {0x8000u, 0x7FFFu, 0x8001u}) v.push_back((h << 16) | low);
  }
  // fp16 ties and neighbours: exponents spanning fp16 subnormals (2^-25) to overflow (2^16).
  for (std::uint32_t exp = 127 - 26; exp <= 127 + 16; ++exp) {
    for (int k = 0; k < 1024; ++k) {
      const std::uint32_t mant = (rng() & 0x7FE000u);
      for (std::uint32_t low : {0x1000u, 0x0FFFu, 0x1001u, 0u}) {
        for (std::uint32_t sign : {0u, 0x80000000u}) v.push_back(sign | (exp << 23) | mant | low);
      }
    }
  }
  for (std::uint32_t u : {0x477FEFFFu, 0x477FF000u, 0x477FF001u, 0x7F7FFFFFu, 0x7F7F8000u, 0x33000000u, 0x33000001u,
                          0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00001u, 0x7F800001u, 0u, 0x80000000u, 1u}) {
    v.push_back(u);
  }
  return v;
}

TEST(Cast, Bf16ToF32ExhaustiveMatchesOracle) { CheckAgainstOracle(DType::kBF16, DType::kF32, All16()); }
TEST(Cast, Bf16ToF16ExhaustiveMatchesOracle) { CheckAgainstOracle(DType::kBF16, DType::kF16, All16()); }
TEST(Cast, F16ToF32ExhaustiveMatchesOracle) { CheckAgainstOracle(DType::kF16, DType::kF32, All16()); }
TEST(Cast, F16ToBf16ExhaustiveMatchesOracle) { CheckAgainstOracle(DType::kF16, DType::kBF16, All16()); }
TEST(Cast, F32ToBf16TiesAndRandomMatchOracle) { CheckAgainstOracle(DType::kF32, DType::kBF16, Fp32Patterns()); }
TEST(Cast, F32ToF16TiesAndRandomMatchOracle) { CheckAgainstOracle(DType::kF32, DType::kF16, Fp32Patterns()); }

TEST(Cast, KnownRoundings) {
  // 1 + 2^-8 is a bf16 tie between 1 (even) and 1 + 2^-7: rounds to 1.0 (0x3F80);
  // 1 + 3 * 2^-8 rounds up to the even 1 + 2^-6 (0x3F82).
  const std::vector<float> in = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 65520.0f, 65519.0f, 0x1p-25f, 0x1.8p-25f};
  std::vector<std::uint16_t> bf(in.size()), half(in.size());
  ASSERT_TRUE(
      CastElements(DType::kF32, DType::kBF16, std::as_bytes(std::span(in)), std::as_writable_bytes(std::span(bf)))
          .ok());
  ASSERT_TRUE(
      CastElements(DType::kF32, DType::kF16, std::as_bytes(std::span(in)), std::as_writable_bytes(std::span(half)))
          .ok());
  EXPECT_EQ(bf[0], 0x3F80);
  EXPECT_EQ(bf[1], 0x3F82);
  EXPECT_EQ(half[2], 0x7C00);  // 65520 is the midpoint to 65536: ties to even = infinity
  EXPECT_EQ(half[3], 0x7BFF);  // 65504
  EXPECT_EQ(half[4], 0x0000);  // 2^-25: tie between 0 and the smallest subnormal, even = 0
  EXPECT_EQ(half[5], 0x0001);  // 1.5 * 2^-25 rounds up
}

TEST(Cast, ErrorsWriteNothing) {
  std::vector<std::byte> src(6), dst(6, std::byte{0x5A});
  Status s = CastElements(DType::kF8E4M3, DType::kBF16, src, dst);
  EXPECT_EQ(s.code(), ErrorCode::kUnsupported);
  EXPECT_NE(s.message().find("F8_E4M3"), std::string::npos) << s.message();
  s = CastElements(DType::kF32, DType::kBF16, std::span(src).first(5), dst);
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << s.ToString();
  s = CastElements(DType::kBF16, DType::kF32, src, dst);  // 3 elements need 12 bytes
  EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(s.message().find("needs 12"), std::string::npos) << s.message();
  for (auto b : dst) EXPECT_EQ(b, std::byte{0x5A});
}

}  // namespace
}  // namespace shardwire
