// What an engine rank of `demo rl-sync` must hold at a step, in the engine's own format: the
// synthetic update of the checkpoint (synthetic_update.h), converted as the push converts it
// (FP8 block quantisation of the whole tensor, casts), so that each engine rank can check what
// it received without trusting the push's conversion code path (it quantises block-aligned
// regions of the full tensor with QuantizeFp8BlockRows, independent of any shard split).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "shardwire/checkpoint.h"
#include "shardwire/fp8_block.h"
#include "shardwire/layout.h"
#include "shardwire/model_description.h"
#include "shardwire/status.h"

namespace shardwire::cli {

/// The engine's description for `engine_dtype`: "trainer" (the checkpoint's dtypes) or
/// "fp8-block" (FP8 E4M3 128x128 block-quantised Linear weights with fp32 weight_scale_inv).
/// Errors: kInvalidArgument naming the value; DescribeEngineModel's errors.
Result<ModelDescription> DescribeDemoEngineModel(const ModelDescription& model, const std::string& engine_dtype);

/// Writes shard `box` of engine tensor `spec` at `step` into `out` (box.numel() * dtype bytes),
/// from the checkpoint tensor of the same name (or, for `<w>_scale_inv`, of `<w>`).
/// Errors: kNotFound for a tensor the checkpoint lacks; conversion errors.
Status WriteEngineShard(const Checkpoint& checkpoint, const TensorSpec& spec, const Box& box, std::uint64_t step,
                        std::span<std::byte> out, const Fp8BlockOptions& fp8 = {});

/// Writes every shard of engine rank `rank` at `step` into `buffer` (laid out by `layout`).
Status WriteEngineRank(const Checkpoint& checkpoint, const Layout& layout, int rank, std::uint64_t step,
                       std::span<std::byte> buffer);

}  // namespace shardwire::cli
