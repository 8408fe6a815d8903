// Element types of tensors, as named by the safetensors format.
//
// Source of names: the safetensors specification (huggingface/safetensors,
// README "Format"): "BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32",
// "U32", "F32", "F64", "I64", "U64", "F8_E4M3", "F8_E5M2".
// FP8 semantics follow the OCP 8-bit floating point specification (E4M3 "fn":
// no infinities, max 448; E5M2: IEEE-like, max 57344), as in torch.float8_e4m3fn
// and torch.float8_e5m2.
//
// Thread-safety: all functions are pure and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "shardwire/status.h"

namespace shardwire {

enum class DType : std::uint8_t {
  kBool, kU8, kI8, kI16, kU16, kI32, kU32, kI64, kU64,
  kF16, kBF16, kF32, kF64, kF8E4M3, kF8E5M2,
};

/// Size of one element in bytes (1, 2, 4 or 8).
std::size_t DTypeSize(DType dtype);

/// The safetensors spelling, e.g. "BF16", "F8_E4M3".
std::string_view DTypeName(DType dtype);

/// Parses a safetensors dtype name. Unknown names give kCorruptData naming the string.
Result<DType> ParseDType(std::string_view name);

/// True for F16, BF16, F32, F64, F8_E4M3, F8_E5M2.
bool IsFloatingPoint(DType dtype);

/// Reads one floating-point element at `src` (unaligned access allowed) as float.
/// Precondition: IsFloatingPoint(dtype). F64 is narrowed to float.
float LoadAsFloat(DType dtype, const std::byte* src);

/// Stores `value` at `dst` (unaligned allowed), rounding to nearest-even.
/// For FP8 E4M3 values beyond +-448 saturate to +-448 and NaN stays NaN;
/// for F16/BF16/E5M2 overflow becomes infinity (IEEE behaviour).
/// Precondition: IsFloatingPoint(dtype).
void StoreFromFloat(DType dtype, float value, std::byte* dst);

}  // namespace shardwire
