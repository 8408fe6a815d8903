// The test oracles' independent placement rule: where element `local` of a box (its row-major
// index within the box) sits in the whole tensor (its row-major index there). Written out
// element by element, sharing no code with the library's run splitting (ForEachContiguousRun,
// the planner's strided moves), so the oracles that use it check that code rather than repeat
// it. Header-only; no state.
#pragma once

#include <cstdint>
#include <vector>

#include "shardwire/box.h"

namespace shardwire::testing_util {

/// Row-major index in a tensor of `shape` of element `local` (0 <= local < box.numel()) of
/// `box` (box.offset/box.shape have shape.size() dimensions).
inline std::int64_t GlobalIndexOfBoxElement(const Box& box, const std::vector<std::int64_t>& shape,
                                            std::int64_t local) {
  std::int64_t rem = local, global = 0, stride = 1;
  for (std::size_t d = shape.size(); d-- > 0;) {
    global += (rem % box.shape[d] + box.offset[d]) * stride;
    rem /= box.shape[d];
    stride *= shape[d];
  }
  return global;
}

}  // namespace shardwire::testing_util
