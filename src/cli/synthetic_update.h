// The deterministic "training step" of the RL weight-sync demo.
//
// Step s turns a checkpoint tensor w0 into w_s, element by element, as a pure function
// of (tensor name, global element index, s, w0[e]): floating-point elements get
// w0 + delta (computed in float, rounded to the dtype), other dtypes get their bytes
// XORed with a hash. Because it depends only on the global index, a trainer updating
// its FSDP shard and an engine rank recomputing its TP shard agree byte for byte
// without ever exchanging data; step 0 is the checkpoint itself.
#pragma once

#include <cstdint>
#include <span>

#include "shardwire/box.h"
#include "shardwire/tensor_spec.h"

namespace shardwire::cli {

/// Writes box `box` of tensor `spec` at step `step` into `out` (dense row-major,
/// box.numel() * dtype size bytes), reading the step-0 values from `full` (the whole
/// checkpoint tensor, spec.nbytes() bytes).
void WriteUpdatedBox(const TensorSpec& spec, std::span<const std::byte> full, const Box& box, std::uint64_t step,
                     std::span<std::byte> out);

}  // namespace shardwire::cli
