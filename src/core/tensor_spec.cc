#include "shardwire/tensor_spec.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace shardwire {

std::int64_t TensorSpec::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::uint64_t TensorSpec::nbytes() const {
  return static_cast<std::uint64_t>(numel()) * DTypeSize(dtype);
}

std::string ShapeToString(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::string ToString(const TensorSpec& spec) {
  return fmt::format("{} {}{}", spec.name, DTypeName(spec.dtype), ShapeToString(spec.shape));
}

Status CheckTensorDims(std::span<const TensorSpec> tensors, std::string_view where) {
  for (const TensorSpec& t : tensors) {
    if (t.shape.size() > kMaxTensorDims) {
      return InvalidArgument(fmt::format("{}: tensor {} has {} dimensions (Shardwire handles at most {})", where,
                                         t.name, t.shape.size(), kMaxTensorDims));
    }
  }
  return Status::Ok();
}

}  // namespace shardwire
