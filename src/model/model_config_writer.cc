// WriteModelConfig: ModelConfig -> HF-style config.json (canonical key names).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/atomic_file.h"
#include "shardwire/model_config.h"

namespace shardwire {
namespace {

Result<std::string> TorchDTypeName(DType d) {
  switch (d) {
    case DType::kBF16: return std::string("bfloat16");
    case DType::kF16: return std::string("float16");
    case DType::kF32: return std::string("float32");
    case DType::kF64: return std::string("float64");
    default:
      return InvalidArgument(fmt::format("torch_dtype {} has no config.json spelling", DTypeName(d)));
  }
}

// The expert-count key each family's config class uses.
std::string_view ExpertsKey(std::string_view model_type) {
  if (model_type == "mixtral") return "num_local_experts";
  if (model_type.rfind("deepseek", 0) == 0 || model_type.rfind("kimi", 0) == 0 || model_type == "glm4_moe") {
    return "n_routed_experts";
  }
  return "num_experts";
}

}  // namespace

Status WriteModelConfig(const ModelConfig& c, const std::string& path) {
  nlohmann::ordered_json j;
  if (!c.architecture.empty()) j["architectures"] = {c.architecture};
  j["model_type"] = c.model_type;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  // 0: absent (ModelConfig), left out as the config it came from did.
  if (c.num_attention_heads > 0) j["num_attention_heads"] = c.num_attention_heads;
  if (c.num_key_value_heads > 0) j["num_key_value_heads"] = c.num_key_value_heads;
  if (c.head_dim > 0) j["head_dim"] = c.head_dim;
  if (c.intermediate_size > 0) j["intermediate_size"] = c.intermediate_size;
  j["vocab_size"] = c.vocab_size;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = c.mlp_bias;
  if (c.torch_dtype.has_value()) {
    SW_ASSIGN_OR_RETURN(j["torch_dtype"], TorchDTypeName(*c.torch_dtype));
  }
  auto put = [&](std::string_view key, const std::optional<std::int64_t>& v) {
    if (v.has_value()) j[std::string(key)] = *v;
  };
  put(ExpertsKey(c.model_type), c.num_experts);
  put("num_experts_per_tok", c.num_experts_per_tok);
  put("moe_intermediate_size", c.moe_intermediate_size);
  put("n_shared_experts", c.n_shared_experts);
  put("first_k_dense_replace", c.first_k_dense_replace);
  put("q_lora_rank", c.q_lora_rank);
  put("kv_lora_rank", c.kv_lora_rank);
  put("qk_nope_head_dim", c.qk_nope_head_dim);
  put("qk_rope_head_dim", c.qk_rope_head_dim);
  put("v_head_dim", c.v_head_dim);
  put("moe_layer_freq", c.moe_layer_freq);
  put("decoder_sparse_step", c.decoder_sparse_step);
  if (!c.mlp_only_layers.empty()) j["mlp_only_layers"] = c.mlp_only_layers;
  put("num_nextn_predict_layers", c.num_nextn_predict_layers);
  if (!c.quant_method.empty()) {
    nlohmann::ordered_json q;
    if (c.quant_method != "unknown") q["quant_method"] = c.quant_method;
    if (c.fp8_block_size.has_value()) {
      q["fmt"] = "e4m3";  // the only FP8 format DescribeModel describes
      q["weight_block_size"] = {(*c.fp8_block_size)[0], (*c.fp8_block_size)[1]};
    }
    j["quantization_config"] = q;
  }

  for (const auto& [key, text] : c.extra) {
    if (j.contains(key)) continue;
    nlohmann::ordered_json v = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (v.is_discarded()) return InvalidArgument(fmt::format("config key {}: \"{}\" is not JSON", key, text));
    j[key] = std::move(v);
  }

  const std::string text = j.dump(2) + "\n";
  SW_ASSIGN_OR_RETURN(model::AtomicFile file, model::AtomicFile::Create(path));
  SW_RETURN_IF_ERROR(file.Write(std::as_bytes(std::span(text.data(), text.size()))));
  return file.Commit();
}

}  // namespace shardwire
