// Every kernel path this CPU supports (fp8_kernels.h: AVX-512 intrinsics, AVX2-compiled loops)
// must produce the portable path's bits: on every finite bf16/fp16 pattern and on random fp32
// patterns (subnormals, huge values, zeros), with block widths that are and are not multiples of
// the vector width, with multipliers derived from the blocks' amax as the quantiser derives
// them (both scale formats and arithmetics), and without writing a byte outside a row's columns.
// (The oracle tests in fp8_block_test.cc and cast_test.cc also run once per path.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "convert/fp8_kernels.h"

namespace shardwire {
namespace {

using convert::ConvertKernels;
using convert::KernelIsa;

std::vector<const ConvertKernels*> OtherPaths() {
  std::vector<const ConvertKernels*> out;
  for (KernelIsa isa : {KernelIsa::kAvx2, KernelIsa::kAvx512}) {
    if (const ConvertKernels* k = convert::KernelsFor(isa)) out.push_back(k);
  }
  return out;
}

TEST(KernelPaths, PortableIsAlwaysAvailableAndOneIsActive) {
  ASSERT_NE(convert::KernelsFor(KernelIsa::kPortable), nullptr);
  EXPECT_STREQ(convert::KernelsFor(KernelIsa::kPortable)->name, "portable");
  const ConvertKernels& active = convert::Kernels();
  EXPECT_EQ(convert::KernelsFor(active.isa), &active);
  std::printf("active kernel path: %s; supported:", active.name);
  for (const ConvertKernels* k : OtherPaths()) std::printf(" %s", k->name);
  std::printf("\n");
}

// A matrix of `esize`-byte elements holding `patterns` (repeated), rows of `cols`.
struct Matrix {
  std::vector<std::byte> bytes;
  std::int64_t rows = 0, cols = 0, esize = 0;
};

Matrix Fill(const std::vector<std::uint32_t>& patterns, std::int64_t esize, std::int64_t rows, std::int64_t cols,
            unsigned seed) {
  Matrix m{std::vector<std::byte>(static_cast<std::size_t>(rows * cols * esize)), rows, cols, esize};
  std::mt19937 rng(seed);
  std::vector<std::uint32_t> order(patterns);
  std::shuffle(order.begin(), order.end(), rng);
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    const std::uint32_t v = order[static_cast<std::size_t>(i) % order.size()];
    std::memcpy(m.bytes.data() + i * esize, &v, static_cast<std::size_t>(esize));
  }
  return m;
}

std::vector<std::uint32_t> Finite16(std::uint32_t special) {
  std::vector<std::uint32_t> v;
  for (std::uint32_t h = 0; h < 65536; ++h)
    if ((h & 0x7FFFu) < special) v.push_back(h);
  return v;
}

std::vector<std::uint32_t> Finite32(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint32_t> v = {0u, 0x80000000u, 1u, 0x807FFFFFu, 0x00800000u, 0x7F7FFFFFu, 0xFF7FFFFFu};
  while (v.size() < n) {
    std::uint32_t x = rng();
    if (((x >> 23) & 0xFFu) == 0xFFu) continue;
    // A third of the values keep small exponents (fp32 subnormals, tiny products).
    if (v.size() % 3 == 0) x &= 0x83FFFFFFu;
    v.push_back(x);
  }
  return v;
}

// Multipliers as the quantiser derives them from a block's amax (fp32 bits; fp8_block.cc
// ScaleFor): 448/amax, (1/amax)*448, a power of two, and a fraction of those (smaller products).
std::vector<float> Multipliers(const std::vector<std::uint32_t>& amax_bits, int variant) {
  std::vector<float> out;
  for (std::uint32_t bits : amax_bits) {
    float amax;
    std::memcpy(&amax, &bits, 4);
    amax = std::max(amax, 1e-4f);
    switch (variant) {
      case 0:
        out.push_back(448.0f / amax);
        break;
      case 1:
        out.push_back((1.0f / amax) * 448.0f);
        break;
      case 2:
        out.push_back(std::exp2(std::floor(std::log2(448.0f / amax))));
        break;
      default:
        out.push_back((448.0f / amax) * 0.37f);
        break;
    }
  }
  return out;
}

void CompareQuantiser(const Matrix& m, std::int64_t bc, convert::BlockMaxFn (*max_of)(const ConvertKernels&),
                      convert::ToE4m3Fn (*scale_of)(const ConvertKernels&), bool fp16) {
  const ConvertKernels& base = *convert::KernelsFor(KernelIsa::kPortable);
  const std::int64_t nb = (m.cols + bc - 1) / bc;
  const std::int64_t stride = m.cols * m.esize;
  std::vector<std::uint32_t> want_max(static_cast<std::size_t>(nb), 0u);
  max_of(base)(m.bytes.data(), stride, m.rows, m.cols, bc, want_max.data());
  for (const ConvertKernels* k : OtherPaths()) {
    std::vector<std::uint32_t> got_max(static_cast<std::size_t>(nb), 0u);
    max_of (*k)(m.bytes.data(), stride, m.rows, m.cols, bc, got_max.data());
    EXPECT_EQ(got_max, want_max) << k->name << " block max, bc " << bc;
  }
  // The magnitude bits as fp32 bits (exact conversion by the portable cast).
  std::vector<std::uint32_t> amax = want_max;
  if (m.esize == 2) {
    for (auto& x : amax) {
      const auto h = static_cast<std::uint16_t>(x);
      (fp16 ? base.f16_to_f32 : base.bf16_to_f32)(reinterpret_cast<const std::byte*>(&h),
                                                  reinterpret_cast<std::byte*>(&x), 1);
    }
  }
  for (int variant = 0; variant < 4; ++variant) {
    const std::vector<float> muls = Multipliers(amax, variant);
    // Output rows 7 bytes wider than the matrix, filled with a canary.
    const std::int64_t out_stride = m.cols + 7;
    std::vector<std::uint8_t> want(static_cast<std::size_t>(m.rows * out_stride), 0xA5);
    scale_of(base)(m.bytes.data(), stride, m.rows, m.cols, bc, muls.data(), want.data(), out_stride, 0);
    for (std::int64_t r = 0; r < m.rows; ++r)
      for (std::int64_t c = m.cols; c < out_stride; ++c)
        ASSERT_EQ(want[static_cast<std::size_t>(r * out_stride + c)], 0xA5);
    // Prefetching changes no byte, and prefetches past the matrix (the next block-row of the last
    // one) or far from any mapping (2^46 bytes on) never fault.
    const std::int64_t prefetch_offset = variant % 2 == 0 ? 128 * stride : std::int64_t{1} << 46;
    for (const ConvertKernels* k : OtherPaths()) {
      std::vector<std::uint8_t> got(want.size(), 0xA5);
      scale_of (*k)(m.bytes.data(), stride, m.rows, m.cols, bc, muls.data(), got.data(), out_stride, prefetch_offset);
      std::size_t bad = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        if (got[i] != want[i] && ++bad <= 5) {
          ADD_FAILURE() << k->name << " bc " << bc << " variant " << variant << " byte " << i << " (row "
                        << static_cast<std::int64_t>(i) / out_stride << "): 0x" << std::hex << int(got[i])
                        << " portable 0x" << int(want[i]);
        }
      }
      EXPECT_EQ(bad, 0u) << k->name;
    }
  }
}

convert::BlockMaxFn Max16(const ConvertKernels& k) { return k.block_max16; }
convert::BlockMaxFn Max32(const ConvertKernels& k) { return k.block_max32; }
convert::ToE4m3Fn Bf16(const ConvertKernels& k) { return k.bf16_to_e4m3; }
convert::ToE4m3Fn F16(const ConvertKernels& k) { return k.f16_to_e4m3; }
convert::ToE4m3Fn F32(const ConvertKernels& k) { return k.f32_to_e4m3; }

TEST(KernelPaths, QuantiserMatchesPortableOnEveryFiniteBf16) {
  if (OtherPaths().empty()) GTEST_SKIP() << "this CPU has only the portable path";
  const auto p = Finite16(0x7F80u);
  // 130 x 523: 523 is no multiple of 16 or 32 (masked tails); bc 128, 100 and 7, and 48 (the AVX2
  // path's 32-element step, then its 16-element step).
  for (std::int64_t bc : {128, 100, 48, 7}) CompareQuantiser(Fill(p, 2, 130, 523, 1), bc, Max16, Bf16, false);
  // Blocks whose amax is tiny (multipliers up to 448/1e-4: subnormal and rounding-up products).
  std::vector<std::uint32_t> tiny;
  for (std::uint32_t h = 0; h < 0x0400u; ++h) tiny.insert(tiny.end(), {h, h | 0x8000u});
  CompareQuantiser(Fill(tiny, 2, 64, 300, 2), 128, Max16, Bf16, false);
}

TEST(KernelPaths, QuantiserMatchesPortableOnEveryFiniteF16) {
  if (OtherPaths().empty()) GTEST_SKIP() << "this CPU has only the portable path";
  const auto p = Finite16(0x7C00u);
  for (std::int64_t bc : {128, 100, 7}) CompareQuantiser(Fill(p, 2, 130, 509, 3), bc, Max16, F16, true);
}

TEST(KernelPaths, QuantiserMatchesPortableOnRandomF32) {
  if (OtherPaths().empty()) GTEST_SKIP() << "this CPU has only the portable path";
  const auto p = Finite32(1 << 18, 4);
  for (std::int64_t bc : {128, 100, 7}) CompareQuantiser(Fill(p, 4, 200, 1031, 5), bc, Max32, F32, false);
}

TEST(KernelPaths, BlockMaxMatchesPortableWithInfAndNan) {
  if (OtherPaths().empty()) GTEST_SKIP() << "this CPU has only the portable path";
  std::vector<std::uint32_t> all16;
  for (std::uint32_t h = 0; h < 65536; ++h) all16.push_back(h);
  const Matrix m16 = Fill(all16, 2, 128, 520, 6);
  std::vector<std::uint32_t> p32 = Finite32(1 << 16, 7);
  p32.insert(p32.end(), {0x7F800000u, 0xFF800000u, 0x7FC00001u, 0xFFFFFFFFu});
  const Matrix m32 = Fill(p32, 4, 64, 520, 8);
  const ConvertKernels& base = *convert::KernelsFor(KernelIsa::kPortable);
  for (const ConvertKernels* k : OtherPaths()) {
    for (std::int64_t bc : {128, 33, 1}) {
      const std::size_t nb = static_cast<std::size_t>((520 + bc - 1) / bc);
      std::vector<std::uint32_t> a(nb, 5u), b(nb, 5u);  // the kernels raise, never lower
      base.block_max16(m16.bytes.data(), 520 * 2, 128, 520, bc, a.data());
      k->block_max16(m16.bytes.data(), 520 * 2, 128, 520, bc, b.data());
      EXPECT_EQ(a, b) << k->name << " bc " << bc;
      std::vector<std::uint32_t> c(nb, 5u), d(nb, 5u);
      base.block_max32(m32.bytes.data(), 520 * 4, 64, 520, bc, c.data());
      k->block_max32(m32.bytes.data(), 520 * 4, 64, 520, bc, d.data());
      EXPECT_EQ(c, d) << k->name << " bc " << bc;
    }
  }
}

TEST(KernelPaths, CastsMatchPortableOnEveryPatternWithoutOverrun) {
  if (OtherPaths().empty()) GTEST_SKIP() << "this CPU has only the portable path";
  std::vector<std::byte> p16(65536 * 2);
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto x = static_cast<std::uint16_t>(h);
    std::memcpy(p16.data() + h * 2, &x, 2);
  }
  std::vector<std::uint32_t> w32 = Finite32(1 << 20, 9);
  // Infinities, quiet and signalling NaNs, and bf16 / fp16 rounding ties.
  w32.insert(w32.end(), {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0x7F800001u, 0xFFBFFFFFu, 0x3F808000u, 0x3F818000u,
                         0x3F801000u, 0x3F803000u, 0x477FF000u, 0x477FEFFFu, 0x33000000u, 0x33000001u});
  std::vector<std::byte> p32(w32.size() * 4);
  std::memcpy(p32.data(), w32.data(), p32.size());
  struct Case {
    const std::vector<std::byte>* src;
    std::size_t in, out;
    convert::CastFn ConvertKernels::*fn;
  };
  const Case cases[] = {
      {&p16, 2, 4, &ConvertKernels::bf16_to_f32}, {&p16, 2, 2, &ConvertKernels::bf16_to_f16},
      {&p16, 2, 4, &ConvertKernels::f16_to_f32},  {&p16, 2, 2, &ConvertKernels::f16_to_bf16},
      {&p32, 4, 2, &ConvertKernels::f32_to_bf16}, {&p32, 4, 2, &ConvertKernels::f32_to_f16},
  };
  const ConvertKernels& base = *convert::KernelsFor(KernelIsa::kPortable);
  for (const ConvertKernels* k : OtherPaths()) {
    for (const Case& c : cases) {
      // n - 3 elements: a partial last vector; the 3 elements' bytes beyond must stay untouched.
      const std::size_t n = c.src->size() / c.in - 3;
      std::vector<std::byte> a((n + 3) * c.out, std::byte{0x5A}), b(a.size(), std::byte{0x5A});
      (base.*c.fn)(c.src->data(), a.data(), n);
      (k->*c.fn)(c.src->data(), b.data(), n);
      EXPECT_TRUE(a == b) << k->name << " cast " << c.in << " -> " << c.out << " bytes";
      EXPECT_TRUE(std::all_of(b.begin() + static_cast<long>(n * c.out), b.end(),
                              [](std::byte x) { return x == std::byte{0x5A}; }))
          << k->name << " wrote past the end";
    }
  }
}

}  // namespace
}  // namespace shardwire
