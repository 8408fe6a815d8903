// Internal: the model families DescribeModel knows, one describing function per family.
// Adding a family = one new source file with its function + one entry in Families()
// (families.cc). Shared building blocks live in model_builder.h.
#pragma once

#include <span>
#include <string_view>

#include "model/model_builder.h"
#include "shardwire/model_description.h"

namespace shardwire::internal {

/// Adds one family's tensors and fused parameters to `b`, in ModelDescription order.
/// Called with a config whose basic sizes are already checked positive and whose
/// quantisation (if any) is FP8 block-wise (b->fp8()).
using DescribeFamilyFn = Status (*)(const ModelConfig&, ModelBuilder*);

struct ModelFamily {
  std::string_view model_type;  ///< HF config `model_type`
  DescribeFamilyFn describe;
};

/// The pre-rules C++ description (for the equivalence test only).
Result<ModelDescription> LegacyDescribeModel(const ModelConfig& config);

/// Every registered family.
std::span<const ModelFamily> Families();

// Dense Llama-style decoders (dense_decoder.cc).
Status DescribeLlama(const ModelConfig& config, ModelBuilder* b);
Status DescribeMistral(const ModelConfig& config, ModelBuilder* b);
Status DescribeQwen2(const ModelConfig& config, ModelBuilder* b);
Status DescribeQwen3(const ModelConfig& config, ModelBuilder* b);

// Mixture-of-experts decoders with GQA attention (qwen3_moe.cc, mixtral.cc).
Status DescribeQwen3Moe(const ModelConfig& config, ModelBuilder* b);
Status DescribeMixtral(const ModelConfig& config, ModelBuilder* b);

// DeepSeek multi-head latent attention + MoE (deepseek.cc); kimi_k2 is DeepSeek-V3.
Status DescribeDeepseekV2(const ModelConfig& config, ModelBuilder* b);
Status DescribeDeepseekV3(const ModelConfig& config, ModelBuilder* b);

}  // namespace shardwire::internal
