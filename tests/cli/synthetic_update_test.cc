// The demo's deterministic training step (src/cli/synthetic_update.h) against an oracle that
// shares no code with it: the documented formula, element by element, written out here
// (splitmix64 of the tensor-name hash, step and global index; w0 + delta in float, rounded to
// nearest even into the dtype; integer dtypes XORed with the hash). Trainers and verifying
// engine ranks both call WriteUpdatedBox, so a fast path that drifted from the formula would
// still agree with itself: this test is what pins it.
#include "cli/synthetic_update.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "shardwire/dtype.h"

namespace shardwire::cli {
namespace {

std::uint64_t OracleMix(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

float OracleDelta(std::uint64_t h) { return (static_cast<float>(h >> 40) / 16777216.0f - 0.5f) * (1.0f / 64.0f); }

std::uint16_t OracleBf16(float f) {  // RNE; NaN -> quiet NaN keeping sign and top payload
  const auto u = std::bit_cast<std::uint32_t>(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  return static_cast<std::uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// The expected bytes of box rows [r0, r0 + nr) x cols [c0, c0 + nc) of a 2-D tensor at `step`.
std::vector<std::byte> Oracle(const TensorSpec& spec, const std::vector<std::byte>& full, std::int64_t r0,
                              std::int64_t nr, std::int64_t c0, std::int64_t nc, std::uint64_t step) {
  const std::size_t es = DTypeSize(spec.dtype);
  const std::int64_t cols = spec.shape[1];
  const std::uint64_t salt = XXH3_64bits(spec.name.data(), spec.name.size()) ^ OracleMix(step);
  std::vector<std::byte> out(static_cast<std::size_t>(nr * nc) * es);
  for (std::int64_t r = 0; r < nr; ++r) {
    for (std::int64_t c = 0; c < nc; ++c) {
      const std::int64_t g = (r0 + r) * cols + (c0 + c);
      const std::byte* src = full.data() + static_cast<std::size_t>(g) * es;
      std::byte* dst = out.data() + static_cast<std::size_t>(r * nc + c) * es;
      const std::uint64_t h = OracleMix(salt + static_cast<std::uint64_t>(g));
      if (spec.dtype == DType::kBF16) {
        std::uint16_t v;
        std::memcpy(&v, src, 2);
        const std::uint16_t w = OracleBf16(std::bit_cast<float>(static_cast<std::uint32_t>(v) << 16) + OracleDelta(h));
        std::memcpy(dst, &w, 2);
      } else if (spec.dtype == DType::kF32) {
        float v;
        std::memcpy(&v, src, 4);
        v += OracleDelta(h);
        std::memcpy(dst, &v, 4);
      } else {  // integers
        for (std::size_t b = 0; b < es; ++b) dst[b] = src[b] ^ static_cast<std::byte>((h >> (8 * b)) & 0xFF);
      }
    }
  }
  return out;
}

// Base values that exercise the rounding: ordinary weights, zeros, subnormals, values near the
// largest finite, infinities and NaNs (whose payload must survive).
std::vector<std::byte> BaseValues(DType dtype, std::size_t n) {
  std::mt19937 rng(7);
  std::normal_distribution<float> weight(0.0f, 0.05f);
  const float specials[] = {0.0f,
                            -0.0f,
                            1e-40f,
                            -3e-39f,
                            std::numeric_limits<float>::max(),
                            -3.3e38f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            std::bit_cast<float>(0xFF812345u),  // a signalling NaN with payload
                            0.0078125f,
                            -0.00390625f};
  std::vector<std::byte> out(n * DTypeSize(dtype));
  for (std::size_t i = 0; i < n; ++i) {
    const float f = i % 97 < std::size(specials) ? specials[i % 97] : weight(rng);
    if (dtype == DType::kBF16) {
      const auto v = static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(f) >> 16);
      std::memcpy(out.data() + i * 2, &v, 2);
    } else if (dtype == DType::kF32) {
      std::memcpy(out.data() + i * 4, &f, 4);
    } else {
      for (std::size_t b = 0; b < DTypeSize(dtype); ++b) out[i * DTypeSize(dtype) + b] = static_cast<std::byte>(rng());
    }
  }
  return out;
}

struct Case {
  DType dtype;
  std::int64_t rows, cols;      // the tensor
  std::int64_t r0, nr, c0, nc;  // the box
};

class SyntheticUpdate : public ::testing::TestWithParam<Case> {};

TEST_P(SyntheticUpdate, MatchesTheFormulaElementByElement) {
  const Case k = GetParam();
  const TensorSpec spec{"model.layers.3.mlp.down_proj.weight", k.dtype, {k.rows, k.cols}};
  const auto full = BaseValues(k.dtype, static_cast<std::size_t>(k.rows * k.cols));
  Box box;
  box.offset = {k.r0, k.c0};
  box.shape = {k.nr, k.nc};
  std::vector<std::byte> got(static_cast<std::size_t>(k.nr * k.nc) * DTypeSize(k.dtype));
  for (std::uint64_t step : {0ull, 1ull, 5ull, 123456789ull}) {
    WriteUpdatedBox(spec, full, box, step, got);
    if (step == 0) {  // step 0 is the checkpoint itself
      std::vector<std::byte> base(got.size());
      const std::size_t es = DTypeSize(k.dtype);
      for (std::int64_t r = 0; r < k.nr; ++r) {
        std::memcpy(base.data() + static_cast<std::size_t>(r * k.nc) * es,
                    full.data() + static_cast<std::size_t>((k.r0 + r) * k.cols + k.c0) * es,
                    static_cast<std::size_t>(k.nc) * es);
      }
      EXPECT_EQ(got, base);
      continue;
    }
    const auto want = Oracle(spec, full, k.r0, k.nr, k.c0, k.nc, step);
    ASSERT_EQ(got.size(), want.size());
    std::size_t differ = 0, first = got.size();
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (got[i] != want[i]) {
        ++differ;
        first = std::min(first, i);
      }
    }
    EXPECT_EQ(differ, 0u) << "step " << step << ": " << differ << " bytes differ, first at byte " << first;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Boxes, SyntheticUpdate,
    ::testing::Values(Case{DType::kBF16, 9, 5000, 0, 9, 0, 5000},     // whole tensor: one run of 45,000
                      Case{DType::kBF16, 9, 5000, 2, 5, 1234, 2049},  // runs of 2049 (a chunk and one)
                      Case{DType::kBF16, 40, 300, 3, 30, 7, 11},      // short runs
                      Case{DType::kF32, 7, 4099, 1, 6, 3, 4096}, Case{DType::kI32, 5, 700, 1, 3, 10, 600},
                      Case{DType::kU8, 3, 1000, 0, 3, 0, 1000}));

}  // namespace
}  // namespace shardwire::cli
