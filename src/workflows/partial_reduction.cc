#include "workflows/partial_reduction.h"

#include <vector>

#include <fmt/format.h>

#include "shardwire/cast.h"

namespace shardwire::workflows {

Status SumSlots(DType dtype, std::span<std::byte> slots, std::uint64_t bytes, std::uint32_t addends) {
  if (dtype != DType::kBF16 && dtype != DType::kF16 && dtype != DType::kF32) {
    return Unsupported(
        fmt::format("Partial(sum) reduction of {} elements (BF16, F16 and F32 are summed)", DTypeName(dtype)));
  }
  const std::size_t esize = DTypeSize(dtype);
  if (bytes % esize != 0 || addends == 0 || bytes * addends > slots.size()) {
    return InvalidArgument(fmt::format("reduction of {} slots of {} bytes ({}) in a scratch area of {} bytes", addends,
                                       bytes, DTypeName(dtype), slots.size()));
  }
  const std::size_t n = bytes / esize;
  std::vector<float> sum(n), addend(n);
  auto as_floats = [&](std::uint32_t slot, std::vector<float>& out) {
    return CastElements(dtype, DType::kF32, slots.subspan(slot * bytes, bytes),
                        std::as_writable_bytes(std::span<float>(out)));
  };
  SW_RETURN_IF_ERROR(as_floats(0, sum));
  for (std::uint32_t slot = 1; slot < addends; ++slot) {
    SW_RETURN_IF_ERROR(as_floats(slot, addend));
    for (std::size_t i = 0; i < n; ++i) sum[i] += addend[i];
  }
  return CastElements(DType::kF32, dtype, std::as_bytes(std::span<const float>(sum)), slots.first(bytes));
}

}  // namespace shardwire::workflows
