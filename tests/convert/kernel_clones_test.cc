// The quantiser and cast loops are compiled per CPU (AVX-512, AVX2, baseline; GCC target_clones)
// and the loader runs only the best one, which is what the oracle tests check. This test compiles
// the same loops once more without cloning (baseline x86-64) and requires identical bits from the
// clone the loader picked, on random data and on every bf16/fp16 pattern.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#define SW_KERNELS_NO_CLONES
#define SW_KERNELS_NAMESPACE baseline_kernels
#include "convert/fp8_kernels.cc"  // NOLINT(bugprone-suspicious-include)
#include "convert/fp8_kernels.h"

namespace shardwire {
namespace {

std::vector<std::byte> RandomBytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

// Every 16-bit pattern except Inf/NaN (the quantiser rejects those before its loops run).
std::vector<std::byte> Finite16(std::uint32_t special) {
  std::vector<std::byte> v;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    if ((h & 0x7FFFu) >= special) continue;
    const auto x = static_cast<std::uint16_t>(h);
    v.resize(v.size() + 2);
    std::memcpy(v.data() + v.size() - 2, &x, 2);
  }
  return v;
}

TEST(KernelClones, QuantiserLoopsMatchTheBaselineBuild) {
  const std::int64_t bc = 128;
  const float muls[] = {4480.0f, 0.37f, 1.0f, 3.1e6f, 2.0e-3f, 448.0f, 17.0f, 0.5f};
  struct Case {
    std::vector<std::byte> src;
    std::size_t esize;
    void (*dispatched)(const std::byte*, std::uint8_t*, std::int64_t, std::int64_t, const float*);
    void (*baseline)(const std::byte*, std::uint8_t*, std::int64_t, std::int64_t, const float*);
  };
  std::vector<Case> cases = {
      {Finite16(0x7F80u), 2, convert::RowToE4m3Bf16, baseline_kernels::RowToE4m3Bf16},
      {Finite16(0x7C00u), 2, convert::RowToE4m3F16, baseline_kernels::RowToE4m3F16},
  };
  // fp32: random finite patterns (exponent != 0xFF).
  auto f32 = RandomBytes(4 << 20, 3);
  for (std::size_t i = 3; i < f32.size(); i += 4) f32[i] &= std::byte{0xBF};
  cases.push_back({f32, 4, convert::RowToE4m3F32, baseline_kernels::RowToE4m3F32});
  for (const auto& c : cases) {
    const auto cols = static_cast<std::int64_t>(c.src.size() / c.esize);
    const std::int64_t blocks = (cols + bc - 1) / bc;
    std::vector<float> m(static_cast<std::size_t>(blocks));
    for (std::size_t b = 0; b < m.size(); ++b) m[b] = muls[b % 8];
    std::vector<std::uint8_t> a(static_cast<std::size_t>(cols)), b(a.size());
    c.dispatched(c.src.data(), a.data(), cols, bc, m.data());
    c.baseline(c.src.data(), b.data(), cols, bc, m.data());
    EXPECT_EQ(a, b) << "element size " << c.esize;
    std::vector<std::uint32_t> ma(static_cast<std::size_t>(blocks)), mb(ma.size());
    if (c.esize == 2) {
      convert::RowMaxMagnitude16(c.src.data(), cols, bc, ma.data());
      baseline_kernels::RowMaxMagnitude16(c.src.data(), cols, bc, mb.data());
    } else {
      convert::RowMaxMagnitude32(c.src.data(), cols, bc, ma.data());
      baseline_kernels::RowMaxMagnitude32(c.src.data(), cols, bc, mb.data());
    }
    EXPECT_EQ(ma, mb);
  }
}

TEST(KernelClones, CastLoopsMatchTheBaselineBuild) {
  std::vector<std::byte> p16(65536 * 2);
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto x = static_cast<std::uint16_t>(h);
    std::memcpy(p16.data() + h * 2, &x, 2);
  }
  const auto p32 = RandomBytes(4 << 20, 5);
  struct Case {
    const std::vector<std::byte>* src;
    std::size_t in, out;
    void (*dispatched)(const std::byte*, std::byte*, std::size_t);
    void (*baseline)(const std::byte*, std::byte*, std::size_t);
  };
  const Case cases[] = {
      {&p16, 2, 4, convert::CastBf16ToF32, baseline_kernels::CastBf16ToF32},
      {&p16, 2, 2, convert::CastBf16ToF16, baseline_kernels::CastBf16ToF16},
      {&p16, 2, 4, convert::CastF16ToF32, baseline_kernels::CastF16ToF32},
      {&p16, 2, 2, convert::CastF16ToBf16, baseline_kernels::CastF16ToBf16},
      {&p32, 4, 2, convert::CastF32ToBf16, baseline_kernels::CastF32ToBf16},
      {&p32, 4, 2, convert::CastF32ToF16, baseline_kernels::CastF32ToF16},
  };
  for (const auto& c : cases) {
    const std::size_t n = c.src->size() / c.in;
    std::vector<std::byte> a(n * c.out), b(n * c.out);
    c.dispatched(c.src->data(), a.data(), n);
    c.baseline(c.src->data(), b.data(), n);
    EXPECT_EQ(a, b);
  }
}

}  // namespace
}  // namespace shardwire
