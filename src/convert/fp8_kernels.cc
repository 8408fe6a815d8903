// The quantiser's hot loops, compiled for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and the
// baseline on x86-64; the dynamic loader picks the best per CPU once (GCC `target_clones`, an
// ifunc). Other CPUs get the portable loop. Every clone computes the same bits: the loops use
// only integer ops and single IEEE fp32 operations (-ffp-contract=off: no FMA contraction).
#include "convert/fp8_kernels.h"

#include "convert/float_bits.h"

// SW_KERNELS_NO_CLONES / SW_KERNELS_NAMESPACE let tests/convert/kernel_clones_test.cc compile
// these same loops once more for the baseline CPU, to compare with the clone the loader picked.
#ifndef SW_KERNELS_NAMESPACE
#define SW_KERNELS_NAMESPACE convert
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(SW_KERNELS_NO_CLONES)
#define SW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SW_CLONES
#endif

namespace shardwire::SW_KERNELS_NAMESPACE {
using convert::Bf16ToFloat;
using convert::BitsToFloat;
using convert::F16ToFloat;
using convert::FloatToBf16;
using convert::FloatToBits;
using convert::FloatToE4m3InRange;
using convert::FloatToF16;
using convert::LoadLe;
using convert::StoreLe;

SW_CLONES void RowMaxMagnitude16(const std::byte* row, std::int64_t cols, std::int64_t bc, std::uint32_t* maxes) {
  for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += bc, ++b) {
    const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;
    const std::byte* seg = row + c0 * 2;
    std::uint16_t m = 0;
    for (std::int64_t c = 0; c < n; ++c) {
      const auto v = static_cast<std::uint16_t>(LoadLe<std::uint16_t>(seg + c * 2) & 0x7FFFu);
      m = v > m ? v : m;
    }
    maxes[b] = m > maxes[b] ? m : maxes[b];
  }
}

SW_CLONES void RowMaxMagnitude32(const std::byte* row, std::int64_t cols, std::int64_t bc, std::uint32_t* maxes) {
  for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += bc, ++b) {
    const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;
    const std::byte* seg = row + c0 * 4;
    std::uint32_t m = 0;
    for (std::int64_t c = 0; c < n; ++c) {
      const std::uint32_t v = LoadLe<std::uint32_t>(seg + c * 4) & 0x7FFFFFFFu;
      m = v > m ? v : m;
    }
    maxes[b] = m > maxes[b] ? m : maxes[b];
  }
}

// One loop body per dtype; `load` gives the element at index c of a segment as fp32 (exact).
#define SW_ROW_TO_E4M3(NAME, ESIZE, LOAD)                                                          \
  SW_CLONES void NAME(const std::byte* row, std::uint8_t* out, std::int64_t cols, std::int64_t bc, \
                      const float* muls) {                                                         \
    for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += bc, ++b) {                                   \
      const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;                                      \
      const std::byte* __restrict seg = row + c0 * (ESIZE);                                        \
      std::uint8_t* __restrict dst = out + c0;                                                     \
      const float mul = muls[b];                                                                   \
      for (std::int64_t c = 0; c < n; ++c) dst[c] = FloatToE4m3InRange(LOAD * mul);                \
    }                                                                                              \
  }

SW_ROW_TO_E4M3(RowToE4m3Bf16, 2, Bf16ToFloat(LoadLe<std::uint16_t>(seg + c * 2)))
SW_ROW_TO_E4M3(RowToE4m3F16, 2, F16ToFloat(LoadLe<std::uint16_t>(seg + c * 2)))
SW_ROW_TO_E4M3(RowToE4m3F32, 4, BitsToFloat(LoadLe<std::uint32_t>(seg + c * 4)))

#define SW_CAST(NAME, SRC_T, DST_T, EXPR)                                                          \
  SW_CLONES void NAME(const std::byte* __restrict src, std::byte* __restrict dst, std::size_t n) { \
    for (std::size_t i = 0; i < n; ++i) {                                                          \
      const SRC_T x = LoadLe<SRC_T>(src + i * sizeof(SRC_T));                                      \
      StoreLe<DST_T>(dst + i * sizeof(DST_T), EXPR);                                               \
    }                                                                                              \
  }

SW_CAST(CastBf16ToF32, std::uint16_t, std::uint32_t, FloatToBits(Bf16ToFloat(x)))
SW_CAST(CastBf16ToF16, std::uint16_t, std::uint16_t, FloatToF16(Bf16ToFloat(x)))
SW_CAST(CastF16ToF32, std::uint16_t, std::uint32_t, FloatToBits(F16ToFloat(x)))
SW_CAST(CastF16ToBf16, std::uint16_t, std::uint16_t, FloatToBf16(F16ToFloat(x)))
SW_CAST(CastF32ToBf16, std::uint32_t, std::uint16_t, FloatToBf16(BitsToFloat(x)))
SW_CAST(CastF32ToF16, std::uint32_t, std::uint16_t, FloatToF16(BitsToFloat(x)))

}  // namespace shardwire::SW_KERNELS_NAMESPACE
