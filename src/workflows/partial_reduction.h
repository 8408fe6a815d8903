// The sum step of a Partial(sum) reduction (transfer_plan.h, Reduction) at its reducer.
#pragma once

#include <cstdint>
#include <span>

#include "shardwire/dtype.h"
#include "shardwire/status.h"

namespace shardwire::workflows {

/// Sums `addends` consecutive slots of `bytes` bytes each, starting at `slots`, elementwise into
/// the first slot. Elements of `dtype` (BF16, F16 or F32) are accumulated in fp32 in slot order
/// (slot 0 + slot 1 + ...) and rounded once to `dtype`, round-to-nearest-even (as a bf16
/// all-reduce that accumulates in fp32). Errors: kUnsupported for another dtype;
/// kInvalidArgument when the slots do not fit in `slots` or `bytes` is not a whole number of
/// elements.
Status SumSlots(DType dtype, std::span<std::byte> slots, std::uint64_t bytes, std::uint32_t addends);

}  // namespace shardwire::workflows
