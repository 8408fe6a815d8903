// The AVX2 kernel table (fp8_kernels.h): the quantiser's scale-and-round kernels (bf16, fp16,
// fp32 input) and the 16-bit amax hand-written with AVX2/F16C intrinsics, the rest (fp32 amax,
// casts) the loops of fp8_kernel_loops.inc compiled with __attribute__((target("avx2,f16c"))).
// Only called after __builtin_cpu_supports said the CPU has both (fp8_kernels.cc). x86-64
// GCC/Clang builds only.
//
// The hand-written loops compute the same bits as the portable loops (float_bits.h; the AVX-512
// path, fp8_kernels_avx512.cc, has the derivations of the widening): bf16 as 16 elements per
// register, even and odd elements widened in place, two registers per step packed to 32 codes;
// fp16 through vcvtph2ps (exact); E4M3 rounding by one fp32 add of a power of two whose ulp is the
// E4M3 quantum (E4m3MagnitudeCodesBiased; kernel_paths_test checks every finite bf16 and fp16
// against the portable integer rounding); the last < 16 (< 8) elements of a block by the portable
// scalar code. While they compute, they prefetch the next block-row (ToE4m3Fn's prefetch_offset).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SW_LOOP_TARGET __attribute__((target("avx2,f16c")))
#define SW_LOOP_NS avx2_loops
#include "convert/fp8_kernel_loops.inc"

#include <immintrin.h>

#define SW_AVX2 __attribute__((target("avx2,f16c")))
#define SW_AVX2_INLINE __attribute__((target("avx2,f16c"), always_inline)) inline

namespace shardwire::convert {
namespace avx2 {
namespace {

// Asks for the cache line at `p` in the outer caches (prefetcht2; _MM_HINT_T0 and NTA measured
// the same here). Never faults.
SW_AVX2_INLINE void Prefetch(const std::byte* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T2); }

// E4M3fn magnitude codes of 8 fp32 values 0 <= v < 464, plus kCodeBias (one per dword), by one
// fp32 add. With e = max(exponent of v, -6), c = 2^(e + 20) has an ulp of 2^(e - 3), E4M3's
// quantum at v's exponent (2^-9 for subnormals), and v + c < 2^(e + 21) stays in c's binade: the
// add rounds v to the nearest multiple of the quantum, ties to even, and bits(v + c) - bits(c) is
// the number of quanta k. The code is k + 8 * (e + 6): bits(c) >> 20 is 8 * (e + 127), so the
// sum is code + 8 * 121. k = 16 (rounded up to the next binade) yields the next code, as it
// should. 8 operations, against 10 for the integer rounding of float_bits.h (which this equals).
constexpr int kCodeBias = 8 * 121;
SW_AVX2_INLINE __m256i E4m3MagnitudeCodesBiased(__m256 v) {
  const __m256i eb = _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7F800000)),
                                      _mm256_set1_epi32(0x3C800000));  // exponent bits, at least 2^-6's
  const __m256i c = _mm256_add_epi32(eb, _mm256_set1_epi32(20 << 23));
  const __m256i t = _mm256_castps_si256(_mm256_add_ps(v, _mm256_castsi256_ps(c)));
  return _mm256_add_epi32(_mm256_sub_epi32(t, c), _mm256_srli_epi32(eb, 20));
}

// 16 bf16 elements scaled by `mul`: their E4M3 magnitude codes, one per word in element order
// (even elements widened in place by a shift, odd ones by masking the low half).
SW_AVX2_INLINE __m256i Bf16MagnitudeCodeWords(__m256i raw, __m256 mul) {
  const __m256i mag = _mm256_and_si256(raw, _mm256_set1_epi32(0x7FFF7FFF));
  const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(mag, 16));
  const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(mag, _mm256_set1_epi32(-65536)));
  const __m256i ce = E4m3MagnitudeCodesBiased(_mm256_mul_ps(even, mul));
  const __m256i co = E4m3MagnitudeCodesBiased(_mm256_mul_ps(odd, mul));
  // Both halves at once: (ce - bias) | (co - bias) << 16, no borrow between them.
  return _mm256_sub_epi32(_mm256_add_epi32(ce, _mm256_slli_epi32(co, 16)),
                          _mm256_set1_epi32(kCodeBias | kCodeBias << 16));
}

// 32 bf16 elements (two registers) scaled by `mul`: their 32 E4M3 codes in element order. The
// signs come from a signed saturating pack of the raw words: every negative finite bf16
// (0x8000..0xFF80, -32768..-128 as int16) saturates to 0x80, every positive one to a byte below
// 0x80 (NaN patterns, the only others, are outside the kernel's contract).
SW_AVX2_INLINE __m256i Bf16Codes32(__m256i raw0, __m256i raw1, __m256 mul) {
  const __m256i codes = _mm256_packus_epi16(Bf16MagnitudeCodeWords(raw0, mul), Bf16MagnitudeCodeWords(raw1, mul));
  const __m256i signs = _mm256_and_si256(_mm256_packs_epi16(raw0, raw1), _mm256_set1_epi8(static_cast<char>(0x80)));
  // The packs interleave the two registers per 128-bit lane: quadwords 0, 2, 1, 3 are in order.
  return _mm256_permute4x64_epi64(_mm256_or_si256(codes, signs), 0xD8);
}

// 16 bf16 elements scaled by `mul`: their 16 E4M3 codes in element order.
SW_AVX2_INLINE __m128i Bf16Codes(__m256i raw, __m256 mul) {
  const __m256i w = _mm256_or_si256(Bf16MagnitudeCodeWords(raw, mul),
                                    _mm256_and_si256(_mm256_srli_epi16(raw, 8), _mm256_set1_epi16(0x80)));
  // Words (all <= 0xFF) to bytes, in order: pack the two 128-bit halves.
  return _mm_packus_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
}

SW_AVX2 void Bf16ToE4m3(const std::byte* src, std::int64_t stride, std::int64_t nrows, std::int64_t cols,
                        std::int64_t bc, const float* muls, std::uint8_t* out, std::int64_t out_stride,
                        std::int64_t prefetch_offset) {
  for (std::int64_t r = 0; r < nrows; ++r) {
    const std::byte* row = src + r * stride;
    std::uint8_t* orow = out + r * out_stride;
    for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += bc, ++b) {
      const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;
      const float m = muls[b];
      const __m256 mul = _mm256_set1_ps(m);
      const std::byte* s = row + c0 * 2;
      std::uint8_t* d = orow + c0;
      std::int64_t c = 0;
      for (; c + 32 <= n; c += 32) {
        if (prefetch_offset != 0) Prefetch(s + c * 2 + prefetch_offset);
        const __m256i raw0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + c * 2));
        const __m256i raw1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + c * 2 + 32));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + c), Bf16Codes32(raw0, raw1, mul));
      }
      for (; c + 16 <= n; c += 16) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + c * 2));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(d + c), Bf16Codes(raw, mul));
      }
      for (; c < n; ++c) d[c] = FloatToE4m3InRange(Bf16ToFloat(LoadLe<std::uint16_t>(s + c * 2)) * m);
    }
  }
}

// 8 fp32 values scaled by `mul`: their 8 E4M3 codes (in the low 8 bytes).
SW_AVX2_INLINE __m128i F32Codes(__m256 x, __m256 mul) {
  const __m256i u = _mm256_castps_si256(_mm256_mul_ps(x, mul));
  const __m256i mag = _mm256_sub_epi32(
      E4m3MagnitudeCodesBiased(_mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF)))),
      _mm256_set1_epi32(kCodeBias));
  const __m256i c = _mm256_or_si256(mag, _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80)));
  // Dwords (all <= 0xFF) to words to bytes, in order.
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  return _mm_packus_epi16(w, w);
}

// fp16 (vcvtph2ps, exact) or fp32 input, 8 elements per step, the rest of a block scalar.
#define SW_AVX2_TO_E4M3(NAME, ESIZE, LOAD8, LOAD1)                                                                     \
  SW_AVX2 void NAME(const std::byte* src, std::int64_t stride, std::int64_t nrows, std::int64_t cols, std::int64_t bc, \
                    const float* muls, std::uint8_t* out, std::int64_t out_stride, std::int64_t prefetch_offset) {     \
    for (std::int64_t r = 0; r < nrows; ++r) {                                                                         \
      const std::byte* row = src + r * stride;                                                                         \
      std::uint8_t* orow = out + r * out_stride;                                                                       \
      for (std::int64_t c0 = 0, b = 0; c0 < cols; c0 += bc, ++b) {                                                     \
        const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;                                                        \
        const float m = muls[b];                                                                                       \
        const __m256 mul = _mm256_set1_ps(m);                                                                          \
        const std::byte* s = row + c0 * (ESIZE);                                                                       \
        std::uint8_t* d = orow + c0;                                                                                   \
        std::int64_t c = 0;                                                                                            \
        for (; c + 8 <= n; c += 8) {                                                                                   \
          if (prefetch_offset != 0 && ((c * (ESIZE)) & 63) == 0) Prefetch(s + c * (ESIZE) + prefetch_offset);          \
          _mm_storel_epi64(reinterpret_cast<__m128i*>(d + c), F32Codes(LOAD8, mul));                                   \
        }                                                                                                              \
        for (; c < n; ++c) d[c] = FloatToE4m3InRange(LOAD1 * m);                                                       \
      }                                                                                                                \
    }                                                                                                                  \
  }

SW_AVX2_TO_E4M3(F16ToE4m3, 2, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + c * 2))),
                F16ToFloat(LoadLe<std::uint16_t>(s + c * 2)))
SW_AVX2_TO_E4M3(F32ToE4m3, 4, _mm256_loadu_ps(reinterpret_cast<const float*>(s + c * 4)),
                BitsToFloat(LoadLe<std::uint32_t>(s + c * 4)))
#undef SW_AVX2_TO_E4M3

// Per-block maxima of x & 0x7FFF: one vector accumulator per column block (up to kAcc at a time).
constexpr std::int64_t kAcc = 64;

SW_AVX2 void BlockMax16(const std::byte* src, std::int64_t stride, std::int64_t nrows, std::int64_t cols,
                        std::int64_t bc, std::uint32_t* maxes) {
  const std::int64_t nb = (cols + bc - 1) / bc;
  const __m256i mag = _mm256_set1_epi16(0x7FFF);
  __m256i acc[kAcc];
  std::uint32_t tail[kAcc];
  for (std::int64_t b0 = 0; b0 < nb; b0 += kAcc) {
    const std::int64_t b1 = nb < b0 + kAcc ? nb : b0 + kAcc;
    for (std::int64_t b = b0; b < b1; ++b) {
      acc[b - b0] = _mm256_setzero_si256();
      tail[b - b0] = 0;
    }
    for (std::int64_t r = 0; r < nrows; ++r) {
      const std::byte* row = src + r * stride;
      for (std::int64_t b = b0; b < b1; ++b) {
        const std::int64_t c0 = b * bc;
        const std::int64_t n = cols - c0 < bc ? cols - c0 : bc;
        const std::byte* s = row + c0 * 2;
        __m256i m = acc[b - b0];
        std::int64_t c = 0;
        for (; c + 16 <= n; c += 16) {
          m = _mm256_max_epu16(m,
                               _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + c * 2)), mag));
        }
        acc[b - b0] = m;
        std::uint32_t t = tail[b - b0];
        for (; c < n; ++c) {
          const std::uint32_t v = LoadLe<std::uint16_t>(s + c * 2) & 0x7FFFu;
          t = v > t ? v : t;
        }
        tail[b - b0] = t;
      }
    }
    for (std::int64_t b = b0; b < b1; ++b) {
      alignas(32) std::uint16_t lanes[16];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[b - b0]);
      std::uint32_t m = tail[b - b0];
      for (std::uint16_t v : lanes) m = v > m ? v : m;
      maxes[b] = m > maxes[b] ? m : maxes[b];
    }
  }
}

}  // namespace
}  // namespace avx2

// The compiled loops, with the hand-written kernels in their place (constant-initialised).
const ConvertKernels kAvx2Kernels = {
    KernelIsa::kAvx2,          "avx2",
    avx2::BlockMax16,          avx2_loops::BlockMax32,
    avx2::Bf16ToE4m3,          avx2::F16ToE4m3,
    avx2::F32ToE4m3,           avx2_loops::CastBf16ToF32,
    avx2_loops::CastBf16ToF16, avx2_loops::CastF16ToF32,
    avx2_loops::CastF16ToBf16, avx2_loops::CastF32ToBf16,
    avx2_loops::CastF32ToF16,
};

}  // namespace shardwire::convert
#endif
