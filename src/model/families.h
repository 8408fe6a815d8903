// Internal: the model families DescribeModel knows, one describing function per family.
// Adding a family (e.g. qwen3_moe, mixtral, deepseek_v3) = one new source file with its
// function + one entry in Families() (families.cc).
#pragma once

#include <span>
#include <string_view>
#include <vector>

#include "shardwire/model_description.h"

namespace shardwire::internal {

/// Builds the tensor list of one family, in ModelDescription order. Called with a config
/// whose basic sizes are already checked positive.
using DescribeFamilyFn = Result<std::vector<ModelTensor>> (*)(const ModelConfig&);

struct ModelFamily {
  std::string_view model_type;  ///< HF config `model_type`
  DescribeFamilyFn describe;
};

/// Every registered family.
std::span<const ModelFamily> Families();

// Dense Llama-style decoders (dense_decoder.cc).
Result<std::vector<ModelTensor>> DescribeLlama(const ModelConfig& config);
Result<std::vector<ModelTensor>> DescribeMistral(const ModelConfig& config);
Result<std::vector<ModelTensor>> DescribeQwen2(const ModelConfig& config);
Result<std::vector<ModelTensor>> DescribeQwen3(const ModelConfig& config);

}  // namespace shardwire::internal
