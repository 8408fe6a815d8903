#include "shardwire/dtype.h"

#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <string>

namespace shardwire {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  std::size_t size;
  bool floating;
};

constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {DType::kBool, "BOOL", 1, false},   {DType::kU8, "U8", 1, false},
    {DType::kI8, "I8", 1, false},       {DType::kI16, "I16", 2, false},
    {DType::kU16, "U16", 2, false},     {DType::kI32, "I32", 4, false},
    {DType::kU32, "U32", 4, false},     {DType::kI64, "I64", 8, false},
    {DType::kU64, "U64", 8, false},     {DType::kF16, "F16", 2, true},
    {DType::kBF16, "BF16", 2, true},    {DType::kF32, "F32", 4, true},
    {DType::kF64, "F64", 8, true},      {DType::kF8E4M3, "F8_E4M3", 1, true},
    {DType::kF8E5M2, "F8_E5M2", 1, true},
}};

const DTypeInfo& Info(DType d) { return kDTypes[static_cast<std::size_t>(d)]; }

template <typename T>
T LoadUnaligned(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
void StoreUnaligned(std::byte* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

// Generic decoder for a small IEEE-like format with `exp_bits` exponent bits and
// `man_bits` mantissa bits, bias 2^(exp_bits-1)-1. `has_inf` is false for E4M3fn,
// where the all-ones exponent is a normal binade except mantissa all-ones = NaN.
float DecodeSmallFloat(std::uint32_t bits, int exp_bits, int man_bits, bool has_inf) {
  const std::uint32_t sign = (bits >> (exp_bits + man_bits)) & 1u;
  const std::uint32_t exp = (bits >> man_bits) & ((1u << exp_bits) - 1u);
  const std::uint32_t man = bits & ((1u << man_bits) - 1u);
  const int bias = (1 << (exp_bits - 1)) - 1;
  const std::uint32_t exp_max = (1u << exp_bits) - 1u;
  float value;
  if (exp == exp_max && has_inf) {
    value = man == 0 ? INFINITY : NAN;
  } else if (exp == exp_max && !has_inf && man == (1u << man_bits) - 1u) {
    value = NAN;
  } else if (exp == 0) {
    value = std::ldexp(static_cast<float>(man), 1 - bias - man_bits);
  } else {
    value = std::ldexp(static_cast<float>(man | (1u << man_bits)),
                       static_cast<int>(exp) - bias - man_bits);
  }
  return sign ? -value : value;
}

// Encoder with round-to-nearest-even. Saturates to max finite when !has_inf.
std::uint32_t EncodeSmallFloat(float value, int exp_bits, int man_bits, bool has_inf) {
  const std::uint32_t sign_bit = std::signbit(value) ? 1u << (exp_bits + man_bits) : 0u;
  const int bias = (1 << (exp_bits - 1)) - 1;
  const std::uint32_t exp_max = (1u << exp_bits) - 1u;
  if (std::isnan(value)) {
    return sign_bit | (exp_max << man_bits) | ((1u << man_bits) - 1u);
  }
  // Largest finite value of the format.
  const std::uint32_t max_bits =
      has_inf ? (((exp_max - 1u) << man_bits) | ((1u << man_bits) - 1u))
              : ((exp_max << man_bits) | ((1u << man_bits) - 2u));
  const float max_finite = DecodeSmallFloat(max_bits, exp_bits, man_bits, has_inf);
  float a = std::fabs(value);
  if (std::isinf(a)) {
    return sign_bit | (has_inf ? (exp_max << man_bits) : max_bits);
  }
  // Quantise: find exponent e such that a in [2^e, 2^(e+1)); subnormals below 2^(1-bias).
  int e = 0;
  std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)
  int unbiased = e - 1;
  const int min_normal_exp = 1 - bias;
  if (unbiased < min_normal_exp) unbiased = min_normal_exp;
  const float quantum = std::ldexp(1.0f, unbiased - man_bits);
  const float q = std::nearbyint(a / quantum);  // default rounding mode is to-nearest-even
  float rounded = q * quantum;
  if (rounded > max_finite) {
    if (has_inf) {
      // Round-to-nearest overflows to infinity only past the midpoint to the next binade.
      const float next = std::ldexp(1.0f, static_cast<int>(exp_max) - bias);
      const float midpoint = max_finite + (next - max_finite) / 2;
      if (a >= midpoint) return sign_bit | (exp_max << man_bits);
    }
    return sign_bit | max_bits;
  }
  if (rounded == 0.0f) return sign_bit;
  int re = 0;
  const float rf = std::frexp(rounded, &re);
  int rexp = re - 1;
  if (rexp < min_normal_exp) {  // subnormal
    const auto man = static_cast<std::uint32_t>(std::ldexp(rounded, bias - 1 + man_bits));
    return sign_bit | man;
  }
  const auto man = static_cast<std::uint32_t>(std::ldexp(rf * 2.0f - 1.0f, man_bits));
  return sign_bit | (static_cast<std::uint32_t>(rexp + bias) << man_bits) | man;
}

std::uint16_t FloatToBf16(float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if (std::isnan(f)) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  const std::uint32_t rounding_bias = 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>((u + rounding_bias) >> 16);
}

}  // namespace

std::size_t DTypeSize(DType dtype) { return Info(dtype).size; }
std::string_view DTypeName(DType dtype) { return Info(dtype).name; }
bool IsFloatingPoint(DType dtype) { return Info(dtype).floating; }

Result<DType> ParseDType(std::string_view name) {
  for (const auto& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return CorruptData("unknown dtype \"" + std::string(name) + "\"");
}

float LoadAsFloat(DType dtype, const std::byte* src) {
  switch (dtype) {
    case DType::kF32: return LoadUnaligned<float>(src);
    case DType::kF64: return static_cast<float>(LoadUnaligned<double>(src));
    case DType::kBF16:
      return std::bit_cast<float>(static_cast<std::uint32_t>(LoadUnaligned<std::uint16_t>(src)) << 16);
    case DType::kF16: return DecodeSmallFloat(LoadUnaligned<std::uint16_t>(src), 5, 10, true);
    case DType::kF8E4M3: return DecodeSmallFloat(static_cast<std::uint8_t>(*src), 4, 3, false);
    case DType::kF8E5M2: return DecodeSmallFloat(static_cast<std::uint8_t>(*src), 5, 2, true);
    default: assert(false && "LoadAsFloat on a non-floating dtype"); return 0.0f;
  }
}

void StoreFromFloat(DType dtype, float value, std::byte* dst) {
  switch (dtype) {
    case DType::kF32: StoreUnaligned(dst, value); return;
    case DType::kF64: StoreUnaligned(dst, static_cast<double>(value)); return;
    case DType::kBF16: StoreUnaligned(dst, FloatToBf16(value)); return;
    case DType::kF16:
      StoreUnaligned(dst, static_cast<std::uint16_t>(EncodeSmallFloat(value, 5, 10, true)));
      return;
    case DType::kF8E4M3: *dst = static_cast<std::byte>(EncodeSmallFloat(value, 4, 3, false)); return;
    case DType::kF8E5M2: *dst = static_cast<std::byte>(EncodeSmallFloat(value, 5, 2, true)); return;
    default: assert(false && "StoreFromFloat on a non-floating dtype"); return;
  }
}

}  // namespace shardwire
