// Box: a rectangular slice of a tensor, in global element coordinates.
//
// A shard of a tensor sharded by any combination of Shard(d) placements is a box
// (DTensor semantics: every mesh dimension narrows one tensor dimension to a
// contiguous range). A box is stored row-major and densely in its owner's buffer,
// so its local strides follow from its own shape.
//
// Thread-safety: plain value type; functions are pure.
#pragma once

#include <array>
#include <cassert>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "shardwire/tensor_spec.h"

namespace shardwire {

/// Most dimensions a box (and so a sharded tensor) may have: kMaxTensorDims. Model weights
/// have at most 3 (grouped experts); layouts reject tensors of higher rank.
inline constexpr std::size_t kMaxBoxDims = kMaxTensorDims;

/// A fixed-capacity list of up to kMaxBoxDims int64 values, stored inline: layouts of
/// trillion-parameter MoE models hold millions of boxes, so a box must not allocate.
class Dims {
 public:
  Dims() = default;
  Dims(std::initializer_list<std::int64_t> values) {
    for (auto v : values) push_back(v);
  }
  Dims(std::size_t n, std::int64_t value) { resize(n, value); }
  explicit Dims(const std::vector<std::int64_t>& values) {
    for (auto v : values) push_back(v);
  }

  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  void push_back(std::int64_t v) {
    assert(size_ < kMaxBoxDims);
    values_[size_++] = v;
  }
  void resize(std::size_t n, std::int64_t value = 0) {
    assert(n <= kMaxBoxDims);
    for (std::size_t i = size_; i < n; ++i) values_[i] = value;
    size_ = static_cast<std::uint8_t>(n);
  }
  std::int64_t& operator[](std::size_t i) { return values_[i]; }
  std::int64_t operator[](std::size_t i) const { return values_[i]; }
  const std::int64_t* begin() const { return values_.data(); }
  const std::int64_t* end() const { return values_.data() + size_; }
  bool operator==(const Dims& o) const {
    if (size_ != o.size_) return false;
    for (std::size_t i = 0; i < size_; ++i) {
      if (values_[i] != o.values_[i]) return false;
    }
    return true;
  }

 private:
  std::array<std::int64_t, kMaxBoxDims> values_{};
  std::uint8_t size_ = 0;
};

/// offset[d] <= x[d] < offset[d] + shape[d] for every dimension d (elements).
/// A 0-d box (no dimensions) holds the single element of a 0-d tensor.
struct Box {
  Dims offset;
  Dims shape;

  /// Number of elements (1 for a 0-d box, 0 if any extent is 0).
  std::int64_t numel() const;
  bool operator==(const Box&) const = default;
};

/// The whole tensor of `shape` as a box. Precondition: shape.size() <= kMaxBoxDims.
Box WholeBox(const std::vector<std::int64_t>& shape);

/// The intersection of two boxes of equal rank, or nullopt when it is empty.
std::optional<Box> Intersect(const Box& a, const Box& b);

/// `a` minus `b` as at most 2*rank disjoint boxes (none empty). Rank must match.
std::vector<Box> Subtract(const Box& a, const Box& b);

/// "[0:4, 8:16]"-style rendering for messages.
std::string ToString(const Box& box);

/// Enumerates the maximal runs of `region` that are contiguous both in a dense
/// row-major buffer holding box `from` and in one holding box `to` (region must lie
/// inside both). For each run, calls `fn(from_element, to_element, elements)`:
/// element offsets relative to the start of each buffer, run length in elements.
/// Runs come in row-major order of `region`. Used by the planner (byte moves) and by
/// shard extraction (copying a box out of a full tensor, where `from` is the whole
/// tensor). Cost: O(number of runs).
void ForEachContiguousRun(
    const Box& region, const Box& from, const Box& to,
    const std::function<void(std::int64_t from_element, std::int64_t to_element, std::int64_t elements)>& fn);

/// One strided run: `count` runs of `elements` elements, the i-th starting at
/// from_element + i * from_stride and to_element + i * to_stride (elements).
struct StridedRun {
  std::int64_t from_element = 0;
  std::int64_t to_element = 0;
  std::int64_t elements = 0;
  std::int64_t count = 1;
  std::int64_t from_stride = 0;
  std::int64_t to_stride = 0;
};

/// As ForEachContiguousRun, but the runs along the innermost dimension that is not
/// contiguous come as one StridedRun (e.g. all rows of a dim-1 shard of a 2-D tensor
/// are one call): O(runs / rows) calls, which keeps plans of row-parallel tensors small.
void ForEachStridedRun(const Box& region, const Box& from, const Box& to,
                       const std::function<void(const StridedRun&)>& fn);

}  // namespace shardwire
