#include "model/families.h"

#include <array>

namespace shardwire::internal {

std::span<const ModelFamily> Families() {
  static constexpr std::array<ModelFamily, 4> kFamilies = {{
      {"llama", &DescribeLlama},
      {"mistral", &DescribeMistral},
      {"qwen2", &DescribeQwen2},
      {"qwen3", &DescribeQwen3},
  }};
  return kFamilies;
}

}  // namespace shardwire::internal
