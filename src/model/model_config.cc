// ParseModelConfig / LoadModelConfig: HF transformers config.json -> ModelConfig.
#include "shardwire/model_config.h"

#include <initializer_list>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/regular_file.h"
#include "model/atomic_file.h"
#include "model/bounded_json.h"

namespace shardwire {
namespace {

using nlohmann::json;

// Typed access to the top-level keys of one config, with errors naming source and key.
class ConfigReader {
 public:
  ConfigReader(const json& root, std::string_view source) : root_(root), source_(source) {}

  Status Error(std::string_view key, std::string_view what) const {
    return CorruptData(fmt::format("{}: key \"{}\": {}", source_, key, what));
  }

  // The first of `keys` present with a non-null value, or nullptr (and `*found` = keys[0]).
  const json* Find(std::initializer_list<std::string_view> keys, std::string_view* found) const {
    *found = *keys.begin();
    for (auto key : keys) {
      const auto it = root_.find(key);
      if (it != root_.end() && !it->is_null()) {
        *found = key;
        return &*it;
      }
    }
    return nullptr;
  }

  Result<std::optional<std::int64_t>> OptionalInt(std::initializer_list<std::string_view> keys) const {
    std::string_view key;
    const json* v = Find(keys, &key);
    if (v == nullptr) return std::optional<std::int64_t>();
    if (!v->is_number_integer()) return Error(key, fmt::format("{} is not an integer", v->dump()));
    if (v->is_number_unsigned() && v->get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) {
      return Error(key, fmt::format("{} is too large", v->dump()));
    }
    const auto value = v->get<std::int64_t>();
    if (value < 0) return Error(key, fmt::format("{} is negative", value));
    return std::optional<std::int64_t>(value);
  }

  Result<std::int64_t> PositiveInt(std::initializer_list<std::string_view> keys) const {
    SW_ASSIGN_OR_RETURN(auto value, OptionalInt(keys));
    if (!value.has_value()) return Error(*keys.begin(), "missing");
    if (*value <= 0) return Error(*keys.begin(), fmt::format("{} is not positive", *value));
    return *value;
  }

  Result<std::optional<bool>> OptionalBool(std::string_view key) const {
    std::string_view found;
    const json* v = Find({key}, &found);
    if (v == nullptr) return std::optional<bool>();
    if (!v->is_boolean()) return Error(key, fmt::format("{} is not a boolean", v->dump()));
    return std::optional<bool>(v->get<bool>());
  }

  Result<std::optional<std::string>> OptionalString(std::initializer_list<std::string_view> keys) const {
    std::string_view key;
    const json* v = Find(keys, &key);
    if (v == nullptr) return std::optional<std::string>();
    if (!v->is_string()) return Error(key, fmt::format("{} is not a string", v->dump()));
    return std::optional<std::string>(v->get<std::string>());
  }

  // An array of non-negative integers (empty when absent or null).
  Result<std::vector<std::int64_t>> IntList(std::string_view key) const {
    std::string_view found;
    const json* v = Find({key}, &found);
    std::vector<std::int64_t> out;
    if (v == nullptr) return out;
    if (!v->is_array()) return Error(key, fmt::format("{} is not an array", v->dump()));
    for (const json& e : *v) {
      if (!e.is_number_integer() || e.get<std::int64_t>() < 0) {
        return Error(key, fmt::format("entry {} is not a non-negative integer", e.dump()));
      }
      out.push_back(e.get<std::int64_t>());
    }
    return out;
  }

  // quantization_config: quant_method and, for "fp8", weight_block_size.
  Status Quantization(ModelConfig* c) const {
    std::string_view key;
    const json* q = Find({"quantization_config"}, &key);
    if (q == nullptr) return Status::Ok();
    if (!q->is_object()) return Error(key, "is not an object");
    const auto method = q->find("quant_method");
    if (method == q->end() || method->is_null()) {
      c->quant_method = "unknown";
    } else if (!method->is_string()) {
      return Error("quantization_config.quant_method", fmt::format("{} is not a string", method->dump()));
    } else {
      c->quant_method = method->get<std::string>();
    }
    const auto block = q->find("weight_block_size");
    if (c->quant_method != "fp8" || block == q->end() || block->is_null()) return Status::Ok();
    const std::string_view bkey = "quantization_config.weight_block_size";
    if (!block->is_array() || block->size() != 2) {
      return Error(bkey, fmt::format("{} is not an array of 2 integers", block->dump()));
    }
    std::array<std::int64_t, 2> size{};
    for (std::size_t i = 0; i < 2; ++i) {
      const json& e = (*block)[i];
      if (!e.is_number_integer() || e.get<std::int64_t>() <= 0) {
        return Error(bkey, fmt::format("entry {} is not a positive integer", e.dump()));
      }
      size[i] = e.get<std::int64_t>();
    }
    c->fp8_block_size = size;
    return Status::Ok();
  }

  // Scalar keys not read into a ModelConfig field, as JSON text.
  void Extra(ModelConfig* c) const {
    static constexpr std::string_view kRead[] = {
        "architectures", "model_type", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
        "num_attention_heads", "n_head", "vocab_size", "num_key_value_heads", "head_dim",
        "intermediate_size", "n_inner", "tie_word_embeddings", "attention_bias", "mlp_bias",
        "torch_dtype", "dtype", "num_experts", "num_local_experts", "n_routed_experts",
        "num_experts_per_tok", "moe_intermediate_size", "n_shared_experts", "first_k_dense_replace",
        "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
        "moe_layer_freq", "decoder_sparse_step", "mlp_only_layers", "num_nextn_predict_layers",
        "quantization_config"};
    for (auto it = root_.begin(); it != root_.end(); ++it) {
      if (it->is_structured()) continue;
      bool read = false;
      for (auto k : kRead) read = read || k == it.key();
      if (!read) c->extra[it.key()] = it->dump();
    }
  }

  Result<std::string> Architecture() const {
    std::string_view key;
    const json* v = Find({"architectures"}, &key);
    if (v == nullptr) return std::string();
    if (!v->is_array()) return Error(key, "is not an array");
    if (v->empty()) return std::string();
    if (!(*v)[0].is_string()) return Error(key, "first entry is not a string");
    return (*v)[0].get<std::string>();
  }

 private:
  const json& root_;
  std::string_view source_;
};

// torch dtype spelling -> DType; nullopt for "auto".
Result<std::optional<DType>> ParseTorchDType(const ConfigReader& r, std::string_view key,
                                             std::string name) {
  if (name.rfind("torch.", 0) == 0) name.erase(0, 6);
  if (name == "auto") return std::optional<DType>();
  if (name == "bfloat16") return std::optional<DType>(DType::kBF16);
  if (name == "float16" || name == "half") return std::optional<DType>(DType::kF16);
  if (name == "float32" || name == "float") return std::optional<DType>(DType::kF32);
  if (name == "float64" || name == "double") return std::optional<DType>(DType::kF64);
  return r.Error(key, fmt::format("unknown torch dtype \"{}\"", name));
}

Status Parse(const ConfigReader& r, ModelConfig* c) {
  SW_ASSIGN_OR_RETURN(c->architecture, r.Architecture());
  SW_ASSIGN_OR_RETURN(auto model_type, r.OptionalString({"model_type"}));
  if (!model_type.has_value() || model_type->empty()) return r.Error("model_type", "missing");
  c->model_type = *model_type;
  const bool gpt2 = c->model_type == "gpt2";

  // GPT-2 legacy names per GPT2Config.attribute_map.
  SW_ASSIGN_OR_RETURN(c->hidden_size, r.PositiveInt({"hidden_size", "n_embd"}));
  SW_ASSIGN_OR_RETURN(c->num_hidden_layers, r.PositiveInt({"num_hidden_layers", "n_layer"}));
  // Attention and MLP sizes are optional: a family without attention heads (state-space or
  // RWKV-style models) or without a dense MLP is described by rules that never name them; a rule
  // that does name an absent one fails naming it ("num_attention_heads is missing").
  SW_ASSIGN_OR_RETURN(auto heads, r.OptionalInt({"num_attention_heads", "n_head"}));
  if (heads.has_value() && *heads <= 0)
    return r.Error("num_attention_heads", fmt::format("{} is not positive", *heads));
  c->num_attention_heads = heads.value_or(0);
  SW_ASSIGN_OR_RETURN(c->vocab_size, r.PositiveInt({"vocab_size"}));

  SW_ASSIGN_OR_RETURN(auto kv_heads, r.OptionalInt({"num_key_value_heads"}));
  c->num_key_value_heads = kv_heads.value_or(c->num_attention_heads);
  if (kv_heads.has_value() && c->num_key_value_heads <= 0) {
    return r.Error("num_key_value_heads", fmt::format("{} is not positive", c->num_key_value_heads));
  }
  // Grouped-query attention shares each KV head among num_attention_heads / num_key_value_heads
  // query heads (transformers' repeat_kv; vLLM asserts the same).
  if (c->num_attention_heads > 0 && c->num_attention_heads % c->num_key_value_heads != 0) {
    return r.Error("num_key_value_heads", fmt::format("{} does not divide num_attention_heads {}",
                                                      c->num_key_value_heads, c->num_attention_heads));
  }

  SW_ASSIGN_OR_RETURN(auto head_dim, r.OptionalInt({"head_dim"}));
  if (head_dim.has_value()) {
    if (*head_dim <= 0) return r.Error("head_dim", "is not positive");
    c->head_dim = *head_dim;
  } else if (c->num_attention_heads > 0) {
    if (c->hidden_size % c->num_attention_heads != 0) {
      return r.Error("head_dim", fmt::format("missing, and hidden_size {} is not divisible by "
                                             "num_attention_heads {}",
                                             c->hidden_size, c->num_attention_heads));
    }
    c->head_dim = c->hidden_size / c->num_attention_heads;
  }

  SW_ASSIGN_OR_RETURN(auto inter, r.OptionalInt({"intermediate_size", "n_inner"}));
  if (!inter.has_value() && gpt2) inter = 4 * c->hidden_size;  // GPT2Config: n_inner None means 4 * n_embd
  if (inter.has_value() && *inter <= 0) return r.Error("intermediate_size", "is not positive");
  c->intermediate_size = inter.value_or(0);

  SW_ASSIGN_OR_RETURN(auto tie, r.OptionalBool("tie_word_embeddings"));
  c->tie_word_embeddings = tie.value_or(gpt2);
  SW_ASSIGN_OR_RETURN(auto attn_bias, r.OptionalBool("attention_bias"));
  c->attention_bias = c->model_type == "qwen2" || attn_bias.value_or(false);
  SW_ASSIGN_OR_RETURN(auto mlp_bias, r.OptionalBool("mlp_bias"));
  c->mlp_bias = mlp_bias.value_or(false);

  std::string_view dtype_key;
  std::optional<std::string> dtype_name;
  if (r.Find({"torch_dtype", "dtype"}, &dtype_key) != nullptr) {
    SW_ASSIGN_OR_RETURN(dtype_name, r.OptionalString({dtype_key}));
  }
  if (dtype_name.has_value()) {
    SW_ASSIGN_OR_RETURN(c->torch_dtype, ParseTorchDType(r, dtype_key, *dtype_name));
  }

  SW_ASSIGN_OR_RETURN(c->num_experts, r.OptionalInt({"num_experts", "num_local_experts", "n_routed_experts"}));
  SW_ASSIGN_OR_RETURN(c->num_experts_per_tok, r.OptionalInt({"num_experts_per_tok"}));
  SW_ASSIGN_OR_RETURN(c->moe_intermediate_size, r.OptionalInt({"moe_intermediate_size"}));
  SW_ASSIGN_OR_RETURN(c->n_shared_experts, r.OptionalInt({"n_shared_experts"}));
  SW_ASSIGN_OR_RETURN(c->first_k_dense_replace, r.OptionalInt({"first_k_dense_replace"}));
  SW_ASSIGN_OR_RETURN(c->q_lora_rank, r.OptionalInt({"q_lora_rank"}));
  SW_ASSIGN_OR_RETURN(c->kv_lora_rank, r.OptionalInt({"kv_lora_rank"}));
  SW_ASSIGN_OR_RETURN(c->qk_nope_head_dim, r.OptionalInt({"qk_nope_head_dim"}));
  SW_ASSIGN_OR_RETURN(c->qk_rope_head_dim, r.OptionalInt({"qk_rope_head_dim"}));
  SW_ASSIGN_OR_RETURN(c->v_head_dim, r.OptionalInt({"v_head_dim"}));
  SW_ASSIGN_OR_RETURN(c->moe_layer_freq, r.OptionalInt({"moe_layer_freq"}));
  SW_ASSIGN_OR_RETURN(c->decoder_sparse_step, r.OptionalInt({"decoder_sparse_step"}));
  SW_ASSIGN_OR_RETURN(c->mlp_only_layers, r.IntList("mlp_only_layers"));
  SW_ASSIGN_OR_RETURN(c->num_nextn_predict_layers, r.OptionalInt({"num_nextn_predict_layers"}));
  r.Extra(c);
  return r.Quantization(c);
}

}  // namespace

Result<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source_name) {
  // Duplicate keys: the last wins, as transformers reads a config.json (Python's json).
  auto parsed = model::ParseBoundedJson(json_text, model::kMaxJsonDepth, model::DuplicateKeys::kLastWins,
                                        model::kMaxConfigJsonValues);
  if (!parsed.ok()) return CorruptData(fmt::format("{}: {}", source_name, parsed.status().message()));
  json root = std::move(*parsed);
  if (!root.is_object()) return CorruptData(fmt::format("{}: not a JSON object", source_name));
  ModelConfig config;
  SW_RETURN_IF_ERROR(Parse(ConfigReader(root, source_name), &config));
  return config;
}

Result<ModelConfig> LoadModelConfig(const std::string& path) {
  std::string text;
  SW_RETURN_IF_ERROR(ReadRegularFile(path, &text));
  return ParseModelConfig(text, path);
}

}  // namespace shardwire
