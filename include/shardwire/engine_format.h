// The tensors an inference engine holds when its weight format differs from the trainer's.
//
// An RL trainer holds the model in its training dtype (bf16); the engines it feeds may hold
// it FP8 block-quantised (DeepSeek-V3, Kimi-K2, GLM-4.5 FP8 serving: F8_E4M3 Linear weights
// with F32 `weight_scale_inv` [ceil(out/128), ceil(in/128)] beside them, as in
// quantization_config {"quant_method": "fp8", "weight_block_size": [128, 128]}), and keep some
// tensors in a fixed dtype whatever the model's (vLLM allocates DeepSeek-V3's
// `e_score_correction_bias` in float32: ModelTensor::engine_dtype from the rules file).
// DescribeEngineModel derives that engine description from the trainer's, so that a
// WeightPublisher / WeightSubscriber pair can see per tensor what the push must convert
// (shardwire/push_conversion.h).
//
// Thread-safety: pure function.
#pragma once

#include <array>
#include <cstdint>

#include "shardwire/model_description.h"
#include "shardwire/status.h"

namespace shardwire {

/// The engine's weight format.
enum class EngineWeightFormat : std::uint8_t {
  kTrainer,   ///< the trainer's dtypes (engine_dtype overrides still apply)
  kFp8Block,  ///< quantizable Linear weights in F8_E4M3 with block scales
};

struct EngineFormatOptions {
  EngineWeightFormat weights = EngineWeightFormat::kTrainer;
  /// kFp8Block only: [block_out, block_in] in elements (DeepSeek-V3: 128 x 128).
  std::array<std::int64_t, 2> fp8_block = {128, 128};
  /// Give tensors with a ModelTensor::engine_dtype that dtype (a cast in the push).
  bool apply_engine_dtypes = true;
};

/// The engine-side description of `trainer_model` (which must be unquantised: its config has
/// no quant_method). kFp8Block re-describes the config with quantization_config fp8 and the
/// block size, so the rules file decides which tensors are quantised and where their scales
/// sit (and which fused parameters gain fused scales). Errors: kInvalidArgument for a
/// quantised trainer model or a block size < 1; the errors of DescribeModel.
Result<ModelDescription> DescribeEngineModel(const ModelDescription& trainer_model, const EngineFormatOptions& options);

}  // namespace shardwire
