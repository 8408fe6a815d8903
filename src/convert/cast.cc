#include "shardwire/cast.h"

#include <cstring>
#include <string>

#include "convert/fp8_kernels.h"

namespace shardwire {

bool IsCastableDType(DType dtype) { return dtype == DType::kF16 || dtype == DType::kBF16 || dtype == DType::kF32; }

Status CastElements(DType from, DType to, std::span<const std::byte> src, std::span<std::byte> dst) {
  if (!IsCastableDType(from) || !IsCastableDType(to)) {
    return Unsupported("cast from " + std::string(DTypeName(from)) + " to " + std::string(DTypeName(to)) +
                       ": only F16, BF16 and F32 are supported");
  }
  const std::size_t in_size = DTypeSize(from);
  if (src.size() % in_size != 0) {
    return InvalidArgument("cast from " + std::string(DTypeName(from)) + ": source of " + std::to_string(src.size()) +
                           " bytes is not a whole number of elements");
  }
  const std::size_t count = src.size() / in_size;
  if (dst.size() != count * DTypeSize(to)) {
    return InvalidArgument("cast " + std::string(DTypeName(from)) + " -> " + std::string(DTypeName(to)) + " of " +
                           std::to_string(count) + " elements needs " + std::to_string(count * DTypeSize(to)) +
                           " destination bytes, got " + std::to_string(dst.size()));
  }
  const std::byte* s = src.data();
  std::byte* d = dst.data();
  if (from == to) {
    if (count != 0) std::memcpy(d, s, src.size());
    return Status::Ok();
  }
  const convert::ConvertKernels& k = convert::Kernels();
  switch (from) {
    case DType::kBF16:
      (to == DType::kF32 ? k.bf16_to_f32 : k.bf16_to_f16)(s, d, count);
      break;
    case DType::kF16:
      (to == DType::kF32 ? k.f16_to_f32 : k.f16_to_bf16)(s, d, count);
      break;
    default:  // F32
      (to == DType::kBF16 ? k.f32_to_bf16 : k.f32_to_f16)(s, d, count);
      break;
  }
  return Status::Ok();
}

}  // namespace shardwire
