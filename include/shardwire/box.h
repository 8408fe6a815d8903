// Box: a rectangular slice of a tensor, in global element coordinates.
//
// A shard of a tensor sharded by any combination of Shard(d) placements is a box
// (DTensor semantics: every mesh dimension narrows one tensor dimension to a
// contiguous range). A box is stored row-major and densely in its owner's buffer,
// so its local strides follow from its own shape.
//
// Thread-safety: plain value type; functions are pure.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace shardwire {

/// offset[d] <= x[d] < offset[d] + shape[d] for every dimension d (elements).
/// A 0-d box (empty vectors) holds the single element of a 0-d tensor.
struct Box {
  std::vector<std::int64_t> offset;
  std::vector<std::int64_t> shape;

  /// Number of elements (1 for a 0-d box, 0 if any extent is 0).
  std::int64_t numel() const;
  bool operator==(const Box&) const = default;
};

/// The whole tensor of `shape` as a box.
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
    const std::function<void(std::int64_t from_element, std::int64_t to_element,
                             std::int64_t elements)>& fn);

}  // namespace shardwire
