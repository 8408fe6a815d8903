#include "shardwire/model_layouts.h"

#include <fmt/format.h>

namespace shardwire {
namespace {

std::vector<TensorSpec> Specs(const ModelDescription& model) {
  std::vector<TensorSpec> specs;
  specs.reserve(model.tensors.size());
  for (const ModelTensor& t : model.tensors) specs.push_back(t.spec);
  return specs;
}

}  // namespace

Result<Layout> MakeFsdpLayoutForModel(const ModelDescription& model, int num_ranks) {
  return MakeFsdpLayout(Specs(model), num_ranks);
}

Result<Layout> MakeTpLayoutForModel(const ModelDescription& model, int tp, int replicas) {
  if (tp < 1 || replicas < 1) {
    return InvalidArgument(fmt::format("TP size {} and engine count {} must both be >= 1", tp, replicas));
  }
  const ModelConfig& c = model.config;
  if (c.num_attention_heads % tp != 0) {
    return InvalidArgument(fmt::format("TP size {} does not divide the {} attention heads of {}", tp,
                                       c.num_attention_heads, c.model_type));
  }
  if (c.num_key_value_heads % tp != 0) {
    return InvalidArgument(fmt::format("TP size {} does not divide the {} key/value heads of {}", tp,
                                       c.num_key_value_heads, c.model_type));
  }
  std::vector<int> dims;
  dims.reserve(model.tensors.size());
  for (const ModelTensor& t : model.tensors) dims.push_back(ShardDim(t.role));
  return MakeTpLayout(Specs(model), dims, tp, replicas);
}

}  // namespace shardwire
