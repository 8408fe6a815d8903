// The quantiser's hot loops, compiled for AVX-512 (x86-64-v4), AVX2 (x86-64-v3) and the
// baseline on x86-64; the dynamic loader picks the best per CPU once (GCC `target_clones`, an
// ifunc). Other CPUs get the portable loop. Every clone computes the same bits: the loops use
// only integer ops and single IEEE fp32 operations (-ffp-contract=off: no FMA contraction).
#include "convert/fp8_kernels.h"

#include "convert/float_bits.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define SW_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SW_CLONES
#endif

namespace shardwire::convert {

SW_CLONES std::uint32_t MaxMagnitude16(const std::byte* src, std::int64_t stride, std::int64_t nrows,
                                       std::int64_t ncols) {
  std::uint16_t best = 0;
  for (std::int64_t r = 0; r < nrows; ++r) {
    const std::byte* row = src + r * stride * 2;
    std::uint16_t m = 0;
    for (std::int64_t c = 0; c < ncols; ++c) {
      const auto b = static_cast<std::uint16_t>(LoadLe<std::uint16_t>(row + c * 2) & 0x7FFFu);
      m = b > m ? b : m;
    }
    best = m > best ? m : best;
  }
  return best;
}

SW_CLONES std::uint32_t MaxMagnitude32(const std::byte* src, std::int64_t stride, std::int64_t nrows,
                                       std::int64_t ncols) {
  std::uint32_t best = 0;
  for (std::int64_t r = 0; r < nrows; ++r) {
    const std::byte* row = src + r * stride * 4;
    std::uint32_t m = 0;
    for (std::int64_t c = 0; c < ncols; ++c) {
      const std::uint32_t b = LoadLe<std::uint32_t>(row + c * 4) & 0x7FFFFFFFu;
      m = b > m ? b : m;
    }
    best = m > best ? m : best;
  }
  return best;
}

SW_CLONES void ScaleToE4m3Bf16(const std::byte* __restrict src, std::uint8_t* __restrict out, std::size_t n,
                               float mul) {
  for (std::size_t c = 0; c < n; ++c) out[c] = FloatToE4m3(Bf16ToFloat(LoadLe<std::uint16_t>(src + c * 2)) * mul);
}

SW_CLONES void ScaleToE4m3F16(const std::byte* __restrict src, std::uint8_t* __restrict out, std::size_t n, float mul) {
  for (std::size_t c = 0; c < n; ++c) out[c] = FloatToE4m3(F16ToFloat(LoadLe<std::uint16_t>(src + c * 2)) * mul);
}

SW_CLONES void ScaleToE4m3F32(const std::byte* __restrict src, std::uint8_t* __restrict out, std::size_t n, float mul) {
  for (std::size_t c = 0; c < n; ++c) out[c] = FloatToE4m3(BitsToFloat(LoadLe<std::uint32_t>(src + c * 4)) * mul);
}

}  // namespace shardwire::convert
