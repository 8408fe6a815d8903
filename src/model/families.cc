#include "model/families.h"

#include <array>

namespace shardwire::internal {

std::span<const ModelFamily> Families() {
  static constexpr std::array<ModelFamily, 9> kFamilies = {{
      {"llama", &DescribeLlama},
      {"mistral", &DescribeMistral},
      {"qwen2", &DescribeQwen2},
      {"qwen3", &DescribeQwen3},
      {"qwen3_moe", &DescribeQwen3Moe},
      {"mixtral", &DescribeMixtral},
      {"deepseek_v2", &DescribeDeepseekV2},
      {"deepseek_v3", &DescribeDeepseekV3},
      {"kimi_k2", &DescribeDeepseekV3},  // Kimi-K2: architectures [DeepseekV3ForCausalLM]
  }};
  return kFamilies;
}

}  // namespace shardwire::internal
