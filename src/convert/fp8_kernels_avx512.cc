// The AVX-512 kernel table (fp8_kernels.h), hand-written with AVX-512F/BW/VL intrinsics; every
// function carries __attribute__((target(...))) and is only called after __builtin_cpu_supports
// said the CPU has all three (fp8_kernels.cc). x86-64 GCC/Clang builds only.
//
// Lane for lane the same operations as the portable loops (float_bits.h):
//  * E4M3 RNE of an fp32 product: normal range by integer rounding at mantissa bit 20 and a
//    rebias, below 2^-6 by an fp32 add of 16384 (ulp 2^-9, E4M3's subnormal quantum) whose low
//    bits are the code, the sign put in bit 7 with one bit-select.
//  * bf16 input, 32 elements per register: an element's fp32 bits are its 16 bits shifted up, so
//    the even elements are (dword << 16) and the odd ones (dword & 0xFFFF0000); both halves are
//    converted and the two code bytes re-interleaved with one shift and one OR, then narrowed
//    (vpmovdw) to 32 bytes in element order. No shuffles.
//  * fp16 input through vcvtph2ps (exact, like F16ToFloat).
//  * Partial vectors (block ends, row ends) by masked loads and stores: never a byte outside the
//    caller's buffers is written.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

// GCC 12's intrinsics initialise their "undefined" vectors from themselves (_mm512_undefined_*),
// which -Wmaybe-uninitialized reports once inlined; the lanes are never read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "convert/fp8_kernels.h"

#define SW_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define SW_AVX512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline

namespace shardwire::convert {
namespace avx512 {
namespace {

// Mask of the low `n` lanes, 0 <= n < 32 (or < 16 for a 16-lane mask).
SW_AVX512_INLINE __mmask32 Low32(std::int64_t n) { return static_cast<__mmask32>((1u << n) - 1u); }
SW_AVX512_INLINE __mmask16 Low16(std::int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
// The cache line at `p` into the outer caches (ToE4m3Fn's prefetch_offset); never faults.
SW_AVX512_INLINE void Prefetch(const std::byte* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T2); }

// E4M3fn magnitude codes (one per dword, 0..0x7E) of 16 fp32 values 0 <= v < 464, lane for lane
// FloatToE4m3InRange without the sign.
SW_AVX512_INLINE __m512i E4m3MagnitudeCodes(__m512 v) {
  const __m512i ua = _mm512_castps_si512(v);
  // Normal range [2^-6, 464): ((ua + 0x7FFFF + lsb) >> 20) - (120 << 3), lsb = bit 20 (round half
  // to even); the rebias is folded into the add ((120 << 3) << 20 = 0x3C000000; no wrap-around
  // for ua >= 2^-6) and the lsb added under a mask.
  const __mmask16 odd = _mm512_test_epi32_mask(ua, _mm512_set1_epi32(1 << 20));
  __m512i t = _mm512_add_epi32(ua, _mm512_set1_epi32(0x7FFFF - 0x3C000000));
  t = _mm512_mask_add_epi32(t, odd, t, _mm512_set1_epi32(1));
  const __m512i code = _mm512_srli_epi32(t, 20);
  // Below 2^-6 (0x3C800000): fp32(v + 16384) - bits(16384.0f) is the code (8: rounded up to 2^-6).
  const __mmask16 small = _mm512_cmplt_epu32_mask(ua, _mm512_set1_epi32(0x3C800000));
  const __m512i sum = _mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(16384.0f)));
  return _mm512_mask_sub_epi32(code, small, sum, _mm512_set1_epi32(0x46800000));
}

// E4M3fn codes (one per dword, 0..255) of 16 fp32 values with |v| < 464 (FloatToE4m3InRange).
SW_AVX512_INLINE __m512i E4m3Codes(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i mag = E4m3MagnitudeCodes(_mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF))));
  // Bits 0..6 from the code, bit 7 (and the zero bits above) from u >> 24: 0xCA = "A ? B : C".
  return _mm512_ternarylogic_epi32(_mm512_set1_epi32(0x7F), mag, _mm512_srli_epi32(u, 24), 0xCA);
}

// 32 bf16 elements (one register) scaled by `mul`: their 32 E4M3 codes in element order. The
// magnitudes of the even elements are (dword << 16), of the odd ones (dword & 0xFFFF0000) (|x| *
// mul = |x * mul| exactly); the odd codes go to the upper word of each dword, every word gets its
// input's sign bit (bit 15 -> 7), and vpmovwb narrows the 32 words to 32 bytes in order.
SW_AVX512_INLINE __m256i Bf16Codes(__m512i raw, __m512 mul) {
  const __m512i mag = _mm512_and_si512(raw, _mm512_set1_epi32(0x7FFF7FFF));
  const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(mag, 16));
  const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(mag, _mm512_set1_epi32(-65536)));
  const __m512i ce = E4m3MagnitudeCodes(_mm512_mul_ps(even, mul));
  const __m512i co = E4m3MagnitudeCodes(_mm512_mul_ps(odd, mul));
  const __m512i codes = _mm512_or_si512(ce, _mm512_slli_epi32(co, 16));
  // codes | (signs & 0x0080 per word): 0xF8 = "A | (B & C)".
  const __m512i w = _mm512_ternarylogic_epi32(codes, _mm512_srli_epi16(raw, 8), _mm512_set1_epi16(0x80), 0xF8);
  return _mm512_cvtepi16_epi8(w);
}

SW_AVX512 void Bf16ToE4m3(const std::byte* src, std::int64_t stride, std::int64_t nrows, std::int64_t cols,
                          std::int64_t bc, const float* muls, std::uint8_t* out, std::int64_t out_stride,
                          std::int64_t prefetch_offset) {
  for (std::int64_t r = 0; r < nrows; ++r) {
    const std::byte* row = src + r * stride;
    std::uint8_t* orow = out + r * out_stride;
    for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += bc, ++b) {
      const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;
      const __m512 mul = _mm512_set1_ps(muls[b]);
      const std::byte* s = row + c0 * 2;
      std::uint8_t* d = orow + c0;
      std::int64_t c = 0;
      for (; c + 32 <= n; c += 32) {
        if (prefetch_offset != 0) Prefetch(s + c * 2 + prefetch_offset);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + c), Bf16Codes(_mm512_loadu_si512(s + c * 2), mul));
      }
      if (c < n) {
        const __mmask32 k = Low32(n - c);
        _mm256_mask_storeu_epi8(d + c, k, Bf16Codes(_mm512_maskz_loadu_epi16(k, s + c * 2), mul));
      }
    }
  }
}

// 16 fp32 values scaled by `mul`: their 16 E4M3 codes.
SW_AVX512_INLINE __m128i F32Codes(__m512 x, __m512 mul) {
  return _mm512_cvtepi32_epi8(E4m3Codes(_mm512_mul_ps(x, mul)));
}

SW_AVX512 void F16ToE4m3(const std::byte* src, std::int64_t stride, std::int64_t nrows, std::int64_t cols,
                         std::int64_t bc, const float* muls, std::uint8_t* out, std::int64_t out_stride,
                         std::int64_t prefetch_offset) {
  for (std::int64_t r = 0; r < nrows; ++r) {
    const std::byte* row = src + r * stride;
    std::uint8_t* orow = out + r * out_stride;
    for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += bc, ++b) {
      const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;
      const __m512 mul = _mm512_set1_ps(muls[b]);
      const std::byte* s = row + c0 * 2;
      std::uint8_t* d = orow + c0;
      std::int64_t c = 0;
      for (; c + 16 <= n; c += 16) {
        if (prefetch_offset != 0 && (c & 31) == 0) Prefetch(s + c * 2 + prefetch_offset);
        const __m512 x = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + c * 2)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + c), F32Codes(x, mul));
      }
      if (c < n) {
        const __mmask16 k = Low16(n - c);
        const __m512 x = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, s + c * 2));
        _mm_mask_storeu_epi8(d + c, k, F32Codes(x, mul));
      }
    }
  }
}

SW_AVX512 void F32ToE4m3(const std::byte* src, std::int64_t stride, std::int64_t nrows, std::int64_t cols,
                         std::int64_t bc, const float* muls, std::uint8_t* out, std::int64_t out_stride,
                         std::int64_t prefetch_offset) {
  for (std::int64_t r = 0; r < nrows; ++r) {
    const std::byte* row = src + r * stride;
    std::uint8_t* orow = out + r * out_stride;
    for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += bc, ++b) {
      const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;
      const __m512 mul = _mm512_set1_ps(muls[b]);
      const std::byte* s = row + c0 * 4;
      std::uint8_t* d = orow + c0;
      std::int64_t c = 0;
      for (; c + 16 <= n; c += 16) {
        if (prefetch_offset != 0) Prefetch(s + c * 4 + prefetch_offset);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + c), F32Codes(_mm512_loadu_ps(s + c * 4), mul));
      }
      if (c < n) {
        const __mmask16 k = Low16(n - c);
        _mm_mask_storeu_epi8(d + c, k, F32Codes(_mm512_maskz_loadu_ps(k, s + c * 4), mul));
      }
    }
  }
}

// Per-block maxima: one vector accumulator per column block (up to kAcc blocks at a time, rows
// streamed in order), reduced to a scalar once per call instead of once per row.
constexpr std::int64_t kAcc = 64;

SW_AVX512 void BlockMax16(const std::byte* src, std::int64_t stride, std::int64_t nrows, std::int64_t cols,
                          std::int64_t bc, std::uint32_t* maxes) {
  const std::int64_t nb = (cols + bc - 1) / bc;
  const __m512i mag = _mm512_set1_epi16(0x7FFF);
  __m512i acc[kAcc];
  for (std::int64_t b0 = 0; b0 < nb; b0 += kAcc) {
    const std::int64_t b1 = nb < b0 + kAcc ? nb : b0 + kAcc;
    for (std::int64_t b = b0; b < b1; ++b) acc[b - b0] = _mm512_setzero_si512();
    for (std::int64_t r = 0; r < nrows; ++r) {
      const std::byte* row = src + r * stride;
      for (std::int64_t b = b0; b < b1; ++b) {
        const std::int64_t c0 = b * bc;
        const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;
        const std::byte* s = row + c0 * 2;
        __m512i m = acc[b - b0];
        std::int64_t c = 0;
        for (; c + 32 <= n; c += 32) m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_loadu_si512(s + c * 2), mag));
        if (c < n) m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_maskz_loadu_epi16(Low32(n - c), s + c * 2), mag));
        acc[b - b0] = m;
      }
    }
    for (std::int64_t b = b0; b < b1; ++b) {
      const __m512i a = acc[b - b0];
      const __m512i w = _mm512_max_epu32(_mm512_and_si512(a, _mm512_set1_epi32(0xFFFF)), _mm512_srli_epi32(a, 16));
      const auto m = static_cast<std::uint32_t>(_mm512_reduce_max_epu32(w));
      maxes[b] = m > maxes[b] ? m : maxes[b];
    }
  }
}

SW_AVX512 void BlockMax32(const std::byte* src, std::int64_t stride, std::int64_t nrows, std::int64_t cols,
                          std::int64_t bc, std::uint32_t* maxes) {
  const std::int64_t nb = (cols + bc - 1) / bc;
  const __m512i mag = _mm512_set1_epi32(0x7FFFFFFF);
  __m512i acc[kAcc];
  for (std::int64_t b0 = 0; b0 < nb; b0 += kAcc) {
    const std::int64_t b1 = nb < b0 + kAcc ? nb : b0 + kAcc;
    for (std::int64_t b = b0; b < b1; ++b) acc[b - b0] = _mm512_setzero_si512();
    for (std::int64_t r = 0; r < nrows; ++r) {
      const std::byte* row = src + r * stride;
      for (std::int64_t b = b0; b < b1; ++b) {
        const std::int64_t c0 = b * bc;
        const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;
        const std::byte* s = row + c0 * 4;
        __m512i m = acc[b - b0];
        std::int64_t c = 0;
        for (; c + 16 <= n; c += 16) m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_loadu_si512(s + c * 4), mag));
        if (c < n) m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_maskz_loadu_epi32(Low16(n - c), s + c * 4), mag));
        acc[b - b0] = m;
      }
    }
    for (std::int64_t b = b0; b < b1; ++b) {
      const auto m = static_cast<std::uint32_t>(_mm512_reduce_max_epu32(acc[b - b0]));
      maxes[b] = m > maxes[b] ? m : maxes[b];
    }
  }
}

// ---- casts: 16 elements per step, the tail masked ----

// fp32 bits -> bf16 in the low half of each dword: RNE, NaN -> quiet NaN keeping sign and top payload.
SW_AVX512_INLINE __m512i F32BitsToBf16(__m512i u) {
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, lsb), _mm512_set1_epi32(0x7FFF)), 16);
  const __mmask16 nan =
      _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
  return _mm512_mask_or_epi32(rounded, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}
SW_AVX512_INLINE __m512i Bf16ToF32Bits(__m256i h) { return _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16); }
SW_AVX512_INLINE __m256i F32ToF16(__m512 x) {
  return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// One cast loop: LOAD(p, k) gives 16 source elements (k: lanes to load), CONVERT(v) the 16
// results, STORE(p, k, r) writes them.
#define SW_CAST512(NAME, IN, OUT, LOAD_FULL, LOAD_MASKED, CONVERT, STORE_FULL, STORE_MASKED) \
  SW_AVX512 void NAME(const std::byte* src, std::byte* dst, std::size_t n) {                 \
    std::size_t i = 0;                                                                       \
    for (; i + 16 <= n; i += 16) {                                                           \
      const std::byte* p = src + i * (IN);                                                   \
      std::byte* q = dst + i * (OUT);                                                        \
      const auto v = LOAD_FULL;                                                              \
      const auto r = CONVERT;                                                                \
      STORE_FULL;                                                                            \
    }                                                                                        \
    if (i < n) {                                                                             \
      const __mmask16 k = Low16(static_cast<std::int64_t>(n - i));                           \
      const std::byte* p = src + i * (IN);                                                   \
      std::byte* q = dst + i * (OUT);                                                        \
      const auto v = LOAD_MASKED;                                                            \
      const auto r = CONVERT;                                                                \
      STORE_MASKED;                                                                          \
    }                                                                                        \
  }

#define SW_LOAD16 _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
#define SW_LOAD16_MASKED _mm256_maskz_loadu_epi16(k, p)
#define SW_LOAD32 _mm512_loadu_si512(p)
#define SW_LOAD32_MASKED _mm512_maskz_loadu_epi32(k, p)
#define SW_STORE32 _mm512_storeu_si512(q, r)
#define SW_STORE32_MASKED _mm512_mask_storeu_epi32(q, k, r)
#define SW_STORE16 _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), r)
#define SW_STORE16_MASKED _mm256_mask_storeu_epi16(q, k, r)

SW_CAST512(CastBf16ToF32, 2, 4, SW_LOAD16, SW_LOAD16_MASKED, Bf16ToF32Bits(v), SW_STORE32, SW_STORE32_MASKED)
SW_CAST512(CastBf16ToF16, 2, 2, SW_LOAD16, SW_LOAD16_MASKED, F32ToF16(_mm512_castsi512_ps(Bf16ToF32Bits(v))),
           SW_STORE16, SW_STORE16_MASKED)
SW_CAST512(CastF16ToF32, 2, 4, SW_LOAD16, SW_LOAD16_MASKED, _mm512_castps_si512(_mm512_cvtph_ps(v)), SW_STORE32,
           SW_STORE32_MASKED)
SW_CAST512(CastF16ToBf16, 2, 2, SW_LOAD16, SW_LOAD16_MASKED,
           _mm512_cvtepi32_epi16(F32BitsToBf16(_mm512_castps_si512(_mm512_cvtph_ps(v)))), SW_STORE16, SW_STORE16_MASKED)
SW_CAST512(CastF32ToBf16, 4, 2, SW_LOAD32, SW_LOAD32_MASKED, _mm512_cvtepi32_epi16(F32BitsToBf16(v)), SW_STORE16,
           SW_STORE16_MASKED)
SW_CAST512(CastF32ToF16, 4, 2, SW_LOAD32, SW_LOAD32_MASKED, F32ToF16(_mm512_castsi512_ps(v)), SW_STORE16,
           SW_STORE16_MASKED)

}  // namespace
}  // namespace avx512

const ConvertKernels kAvx512Kernels = {
    KernelIsa::kAvx512,    "avx512",
    avx512::BlockMax16,    avx512::BlockMax32,
    avx512::Bf16ToE4m3,    avx512::F16ToE4m3,
    avx512::F32ToE4m3,     avx512::CastBf16ToF32,
    avx512::CastBf16ToF16, avx512::CastF16ToF32,
    avx512::CastF16ToBf16, avx512::CastF32ToBf16,
    avx512::CastF32ToF16,
};

}  // namespace shardwire::convert

#endif
