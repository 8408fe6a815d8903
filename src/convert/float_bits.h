// Internal: branch-free scalar conversions between fp32 and bf16 / fp16 / fp8 E4M3, written
// so that a loop calling them (inlined) vectorises. Every function rounds to nearest-even.
//
// Method: the fp32 bit pattern is rounded at the target's mantissa width by adding
// 0x7F..F plus the lowest kept bit, then shifted (normal range); values below the target's
// smallest normal are rounded by adding a power of two whose ulp equals the target's
// subnormal quantum, letting the FPU round (the classic "magic number" technique described
// e.g. in F. Giesen, "float->half variants", 2016). All constants are derived in comments.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace shardwire::convert {

// memcpy (a builtin) rather than std::bit_cast: these helpers are also inlined into the
// per-CPU kernels (__attribute__((target)) functions of fp8_kernels_avx2.cc / _avx512.cc),
// which should not instantiate shared library templates.
inline float BitsToFloat(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline std::uint32_t FloatToBits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

/// bf16 -> fp32, exact.
inline float Bf16ToFloat(std::uint16_t h) { return BitsToFloat(static_cast<std::uint32_t>(h) << 16); }

/// fp32 -> bf16, RNE; NaN -> quiet NaN with the sign and top payload bits.
inline std::uint16_t FloatToBf16(float f) {
  const std::uint32_t u = FloatToBits(f);
  const std::uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<std::uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);
}

/// fp16 -> fp32, exact (subnormals, infinities and NaN included).
inline float F16ToFloat(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t em = h & 0x7FFFu;
  // Normal: shift exponent+mantissa into fp32 position and rebias 15 -> 127 (+112 << 23).
  const std::uint32_t normal = (em << 13) + (112u << 23);
  // Subnormal (exponent 0): the value is mantissa * 2^-24; int -> float is exact below 2^24.
  const std::uint32_t sub = FloatToBits(static_cast<float>(static_cast<std::int32_t>(em)) * 0x1p-24f);
  const std::uint32_t man = (em & 0x3FFu) << 13;
  const std::uint32_t special = 0x7F800000u | man | (man != 0 ? 0x400000u : 0u);  // inf / quiet NaN
  std::uint32_t r = em < 0x0400u ? sub : normal;
  r = em >= 0x7C00u ? special : r;
  return BitsToFloat(sign | r);
}

/// fp32 -> fp16, RNE; overflow (|x| >= 65520) -> +-inf; NaN -> quiet NaN with the sign.
inline std::uint16_t FloatToF16(float f) {
  const std::uint32_t u = FloatToBits(f);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7FFFFFFFu;
  // Normal range: clamp at 65536 (0x47800000), which rounds into the infinity encoding 0x7C00.
  const std::uint32_t c = a < 0x47800000u ? a : 0x47800000u;
  const std::uint32_t normal = ((c + 0xFFFu + ((c >> 13) & 1u)) >> 13) - (112u << 10);  // rebias 127 -> 15
  // Below 2^-14 (0x38800000): 0.5f has an ulp of 2^-24, fp16's subnormal quantum, so the FPU's
  // RNE addition leaves the code in the low mantissa bits. (Clamped so the add never sees NaN.)
  const std::uint32_t small = a < 0x38800000u ? a : 0u;
  const std::uint32_t sub = FloatToBits(BitsToFloat(small) + 0.5f) - 0x3F000000u;
  const std::uint32_t nan = 0x7E00u | ((a >> 13) & 0x3FFu);
  std::uint32_t r = a < 0x38800000u ? sub : normal;
  r = a > 0x7F800000u ? nan : r;
  return static_cast<std::uint16_t>(sign | r);
}

/// Largest finite E4M3 ("fn": no infinities) value.
inline constexpr float kE4m3Max = 448.0f;

/// fp32 -> fp8 E4M3fn, RNE, for finite |f| < 464 (the block quantiser's range: |x * s| <= 448 up
/// to a few ulps); values in (448, 464) round to 448. Integer compares only, so the selects
/// vectorise.
inline std::uint8_t FloatToE4m3InRange(float f) {
  const std::uint32_t u = FloatToBits(f);
  const std::uint32_t sign = (u >> 24) & 0x80u;
  const std::uint32_t ua = u & 0x7FFFFFFFu;
  // Normal range [2^-6, 464): keep 3 mantissa bits, rebias exponent 127 -> 7.
  const std::uint32_t normal = ((ua + 0x7FFFFu + ((ua >> 20) & 1u)) >> 20) - (120u << 3);
  // Below 2^-6 (0x3C800000): 16384 = 2^14 has an ulp of 2^-9, E4M3's subnormal quantum; the sum's
  // low mantissa bits are the code (8 means rounded up to the smallest normal, code 0x08).
  const std::uint32_t sub = FloatToBits(BitsToFloat(ua) + 16384.0f) - 0x46800000u;
  return static_cast<std::uint8_t>(sign | (ua < 0x3C800000u ? sub : normal));
}

/// Unaligned little-endian loads/stores (memcpy compiles to plain moves).
template <typename T>
inline T LoadLe(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
inline void StoreLe(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace shardwire::convert
