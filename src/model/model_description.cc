#include "shardwire/model_description.h"

#include <optional>

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
  const std::pair<std::string_view, std::int64_t> sizes[] = {{"hidden_size", config.hidden_size},
                                                             {"num_hidden_layers", config.num_hidden_layers},
                                                             {"vocab_size", config.vocab_size}};
  for (const auto& [key, value] : sizes) {
    if (value <= 0) {
      return InvalidArgument(fmt::format("model config {}: {} is {}, must be positive",
                                         config.model_type, key, value));
    }
  }
  // 0: absent from the config (ModelConfig); the rules that need them say so.
  const std::pair<std::string_view, std::int64_t> optional_sizes[] = {
      {"num_attention_heads", config.num_attention_heads},
      {"num_key_value_heads", config.num_key_value_heads},
      {"head_dim", config.head_dim},
      {"intermediate_size", config.intermediate_size}};
  for (const auto& [key, value] : optional_sizes) {
    if (value < 0) {
      return InvalidArgument(
          fmt::format("model config {}: {} is {}, must be positive (or absent)", config.model_type, key, value));
    }
  }
  // A config.json is untrusted: bound every size so that no shape product overflows
  // (three factors of at most 2^20 stay below 2^63 elements) and the tensor count so
  // that describing it takes bounded time and memory.
  const std::pair<std::string_view, std::optional<std::int64_t>> bounded[] = {
      {"hidden_size", config.hidden_size},
      {"num_hidden_layers", config.num_hidden_layers},
      {"num_attention_heads", config.num_attention_heads},
      {"num_key_value_heads", config.num_key_value_heads},
      {"head_dim", config.head_dim},
      {"intermediate_size", config.intermediate_size},
      {"vocab_size", config.vocab_size},
      {"num_experts", config.num_experts},
      {"num_experts_per_tok", config.num_experts_per_tok},
      {"moe_intermediate_size", config.moe_intermediate_size},
      {"n_shared_experts", config.n_shared_experts},
      {"first_k_dense_replace", config.first_k_dense_replace},
      {"q_lora_rank", config.q_lora_rank},
      {"kv_lora_rank", config.kv_lora_rank},
      {"qk_nope_head_dim", config.qk_nope_head_dim},
      {"qk_rope_head_dim", config.qk_rope_head_dim},
      {"v_head_dim", config.v_head_dim},
      {"moe_layer_freq", config.moe_layer_freq},
      {"decoder_sparse_step", config.decoder_sparse_step},
      {"num_nextn_predict_layers", config.num_nextn_predict_layers},
      {"weight_block_size[0]", config.fp8_block_size ? std::optional((*config.fp8_block_size)[0]) : std::nullopt},
      {"weight_block_size[1]", config.fp8_block_size ? std::optional((*config.fp8_block_size)[1]) : std::nullopt}};
  for (const auto& [key, value] : bounded) {
    if (value.has_value() && (*value < 0 || *value > kMaxModelDimension)) {
      return InvalidArgument(fmt::format("model config {}: {} is {}, must be in [0, {}]", config.model_type, key,
                                         *value, kMaxModelDimension));
    }
  }
  const std::int64_t layers = config.num_hidden_layers + config.num_nextn_predict_layers.value_or(0);
  // At most: attention and norms (16), router, shared and routed experts' three
  // projections, all doubled for FP8 scale tensors.
  const std::int64_t per_layer = 2 * (16 + 3 * (config.num_experts.value_or(0) + 2));
  if (layers * per_layer > kMaxModelTensors) {
    return InvalidArgument(fmt::format(
        "model config {}: {} layers of up to {} tensors each exceed the limit of {} tensors per model",
        config.model_type, layers, per_layer, kMaxModelTensors));
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
