#include "shardwire/model_description.h"

#include <fmt/format.h>

#include "shardwire/model_rules.h"

namespace shardwire {

std::string_view ParallelRoleName(ParallelRole role) {
  switch (role) {
    case ParallelRole::kColumn: return "column";
    case ParallelRole::kRow: return "row";
    case ParallelRole::kVocab: return "vocab";
    case ParallelRole::kReplicated: return "replicated";
  }
  return "unknown";
}

int ShardDim(ParallelRole role) {
  switch (role) {
    case ParallelRole::kColumn: return 0;
    case ParallelRole::kRow: return 1;
    case ParallelRole::kVocab: return 0;
    case ParallelRole::kReplicated: return -1;
  }
  return -1;
}

const ModelTensor* ModelDescription::Find(std::string_view name) const {
  for (const auto& t : tensors) {
    if (t.spec.name == name) return &t;
  }
  return nullptr;
}

std::uint64_t ModelDescription::total_bytes() const {
  std::uint64_t total = 0;
  for (const auto& t : tensors) total += t.spec.nbytes();
  return total;
}

std::uint64_t ModelDescription::total_params() const {
  std::uint64_t total = 0;
  for (const auto& t : tensors) total += static_cast<std::uint64_t>(t.spec.numel());
  return total;
}

Result<ModelDescription> DescribeModel(const ModelConfig& config) {
  const std::pair<std::string_view, std::int64_t> sizes[] = {
      {"hidden_size", config.hidden_size},
      {"num_hidden_layers", config.num_hidden_layers},
      {"num_attention_heads", config.num_attention_heads},
      {"num_key_value_heads", config.num_key_value_heads},
      {"head_dim", config.head_dim},
      {"intermediate_size", config.intermediate_size},
      {"vocab_size", config.vocab_size}};
  for (const auto& [key, value] : sizes) {
    if (value <= 0) {
      return InvalidArgument(fmt::format("model config {}: {} is {}, must be positive",
                                         config.model_type, key, value));
    }
  }
  SW_ASSIGN_OR_RETURN(std::optional<ModelRules> rules, FindModelRules(config.model_type));
  if (rules.has_value()) return rules->Describe(config);
  std::string known;
  for (const auto& type : BuiltinModelTypes()) {
    known += known.empty() ? "" : ", ";
    known += type;
  }
  return Unsupported(fmt::format("model_type \"{}\" (architecture \"{}\") is not supported; "
                                 "supported: {}; or describe it in a rules file (docs/model_rules.md, "
                                 "--model-rules FILE, `shardwire describe --write-rules`)",
                                 config.model_type, config.architecture, known));
}


Result<ModelDescription> WithLayers(const ModelDescription& description, int num_layers) {
  if (num_layers < 1) {
    return InvalidArgument(fmt::format("cannot describe {} with {} layers",
                                       description.config.model_type, num_layers));
  }
  ModelConfig config = description.config;
  config.num_hidden_layers = num_layers;
  return DescribeModel(config);
}

}  // namespace shardwire
