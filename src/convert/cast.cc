#include "shardwire/cast.h"

#include <cstring>
#include <string>

#include "convert/float_bits.h"

namespace shardwire {
namespace {

using convert::LoadLe;
using convert::StoreLe;

// One loop per (from, to) pair, each a straight loop over elements so the compiler vectorises
// it; `Load` maps the source element to fp32 (exactly), `Store` rounds fp32 to the target.
template <typename Src, typename Dst, typename Load, typename Store>
void CastLoop(const std::byte* src, std::byte* dst, std::size_t count, Load load, Store store) {
  for (std::size_t i = 0; i < count; ++i) {
    StoreLe<Dst>(dst + i * sizeof(Dst), store(load(LoadLe<Src>(src + i * sizeof(Src)))));
  }
}

float LoadF32(std::uint32_t u) { return convert::BitsToFloat(u); }
std::uint32_t StoreF32(float f) { return convert::FloatToBits(f); }

}  // namespace

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
  using convert::Bf16ToFloat;
  using convert::F16ToFloat;
  using convert::FloatToBf16;
  using convert::FloatToF16;
  switch (from) {
    case DType::kBF16:
      if (to == DType::kF32)
        CastLoop<std::uint16_t, std::uint32_t>(s, d, count, Bf16ToFloat, StoreF32);
      else
        CastLoop<std::uint16_t, std::uint16_t>(s, d, count, Bf16ToFloat, FloatToF16);
      break;
    case DType::kF16:
      if (to == DType::kF32)
        CastLoop<std::uint16_t, std::uint32_t>(s, d, count, F16ToFloat, StoreF32);
      else
        CastLoop<std::uint16_t, std::uint16_t>(s, d, count, F16ToFloat, FloatToBf16);
      break;
    default:  // F32
      if (to == DType::kBF16)
        CastLoop<std::uint32_t, std::uint16_t>(s, d, count, LoadF32, FloatToBf16);
      else
        CastLoop<std::uint32_t, std::uint16_t>(s, d, count, LoadF32, FloatToF16);
      break;
  }
  return Status::Ok();
}

}  // namespace shardwire
