// TensorSpec: the identity of a tensor independent of where its bytes live.
//
// Shapes are row-major (C order, last dimension contiguous) as in PyTorch and
// the safetensors format; a 0-d tensor (shape {}) holds one element.
//
// Thread-safety: plain value type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/dtype.h"
#include "shardwire/status.h"

namespace shardwire {

/// Most dimensions a tensor may have in Shardwire: model weights have at most 3 (grouped
/// experts), and a layout's boxes hold this many inline (kMaxBoxDims, box.h). Checkpoint
/// headers, rules and layouts refuse a tensor of more with a typed error naming it.
inline constexpr std::size_t kMaxTensorDims = 6;

/// A tensor's name, element type and global shape (elements per dimension).
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;

  /// Number of elements (product of the shape; 1 for a 0-d tensor).
  std::int64_t numel() const;
  /// Size in bytes: numel() * DTypeSize(dtype).
  std::uint64_t nbytes() const;

  bool operator==(const TensorSpec&) const = default;
};

/// "[4096, 128]"-style rendering of a shape, for error messages.
std::string ShapeToString(const std::vector<std::int64_t>& shape);

/// "name BF16[4096, 128]"-style rendering, for error messages and summaries.
std::string ToString(const TensorSpec& spec);

/// OK when every tensor has at most kMaxTensorDims dimensions; else kInvalidArgument naming
/// `where` (e.g. "layout fsdp=4"), the first such tensor and its dimension count. The layout
/// builders call it before they build any box (a box holds kMaxBoxDims inline).
/// Thread-safety: pure.
Status CheckTensorDims(std::span<const TensorSpec> tensors, std::string_view where);

}  // namespace shardwire
