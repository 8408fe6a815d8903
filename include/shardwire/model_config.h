// ModelConfig: the architecture numbers of a Hugging Face `config.json`.
//
// Key names follow HF transformers' PretrainedConfig and its model classes (LlamaConfig,
// MistralConfig, Qwen2Config, Qwen3Config, Qwen3MoeConfig, MixtralConfig, DeepseekV3Config,
// GPT2Config). GPT-2's legacy names are accepted through its `attribute_map`: n_embd ->
// hidden_size, n_layer -> num_hidden_layers, n_head -> num_attention_heads, n_inner ->
// intermediate_size (null means 4 * n_embd). Of `quantization_config` (transformers'
// QuantizationConfigMixin; FP8 block layout per DeepSeek-V3's README_WEIGHTS.md) only
// quant_method and weight_block_size are read. Other scalar keys are kept as JSON text in
// ModelConfig::extra for model rules files.
//
// Thread-safety: plain value type; the functions are pure apart from reading / writing
// the named file.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/dtype.h"
#include "shardwire/status.h"

namespace shardwire {

/// What a HF config.json says about a model's tensors. Sizes are element counts.
struct ModelConfig {
  std::string architecture;  ///< first entry of `architectures`, "" when absent
  std::string model_type;    ///< `model_type`, e.g. "llama", "qwen3", "deepseek_v3" (required)
  std::int64_t hidden_size = 0;          ///< required (> 0)
  std::int64_t num_hidden_layers = 0;    ///< required (> 0)
  /// > 0; 0 when the config has none (a family without attention: rules that use it fail
  /// naming it, and TP layouts check no head divisibility).
  std::int64_t num_attention_heads = 0;
  std::int64_t num_key_value_heads = 0;  ///< defaults to num_attention_heads (0 with it)
  /// defaults to hidden_size / num_attention_heads (absent or null); 0 without heads
  std::int64_t head_dim = 0;
  std::int64_t intermediate_size = 0;  ///< dense MLP width (GPT-2 default: 4 * hidden); 0: absent
  std::int64_t vocab_size = 0;         ///< required (> 0)
  /// lm_head shares embed_tokens' storage. Default false, except model_type "gpt2" whose
  /// config class inherits PretrainedConfig's default true.
  bool tie_word_embeddings = false;
  /// q/k/v (and for llama/qwen3 also o) projections carry biases: `attention_bias`
  /// (default false); always true for model_type "qwen2" (its q/k/v biases are hard-wired).
  bool attention_bias = false;
  /// gate/up/down projections carry biases: `mlp_bias` (LlamaConfig), default false.
  bool mlp_bias = false;
  /// `torch_dtype` (or the newer `dtype` key): "bfloat16" -> BF16, "float16"/"half" ->
  /// F16, "float32"/"float" -> F32, "float64" -> F64. Absent (or "auto") leaves it
  /// unset: many real configs omit it (e.g. all the tiny ones in shared/models), and then
  /// the checkpoint's own dtype is the truth; dtype() falls back to BF16.
  std::optional<DType> torch_dtype;

  // Mixture-of-experts / multi-head-latent-attention fields, unset when absent or null.
  std::optional<std::int64_t> num_experts;  ///< num_experts | num_local_experts | n_routed_experts
  std::optional<std::int64_t> num_experts_per_tok;
  std::optional<std::int64_t> moe_intermediate_size;
  std::optional<std::int64_t> n_shared_experts;
  std::optional<std::int64_t> first_k_dense_replace;
  std::optional<std::int64_t> q_lora_rank;
  std::optional<std::int64_t> kv_lora_rank;
  std::optional<std::int64_t> qk_nope_head_dim;
  std::optional<std::int64_t> qk_rope_head_dim;
  std::optional<std::int64_t> v_head_dim;
  /// DeepseekV2/V3Config: a layer >= first_k_dense_replace is MoE when
  /// `layer % moe_layer_freq == 0` (HF default 1).
  std::optional<std::int64_t> moe_layer_freq;
  /// Qwen2Moe/Qwen3MoeConfig: a layer is MoE when `(layer + 1) % decoder_sparse_step == 0`
  /// (HF default 1) and it is not listed in mlp_only_layers.
  std::optional<std::int64_t> decoder_sparse_step;
  /// Qwen2Moe/Qwen3MoeConfig: layers that use the dense MLP (intermediate_size). Empty when
  /// absent or null.
  std::vector<std::int64_t> mlp_only_layers;
  /// DeepSeek-V3: number of multi-token-prediction (MTP) modules stored after the main
  /// layers, as layers num_hidden_layers .. num_hidden_layers + n - 1 (README_WEIGHTS.md of
  /// deepseek-ai/DeepSeek-V3). Unset when absent.
  std::optional<std::int64_t> num_nextn_predict_layers;

  /// `quantization_config.quant_method` ("fp8", "awq", ...); "" when the config has no
  /// quantization_config, "unknown" when it has one without quant_method. DescribeModel
  /// describes "" and block-wise "fp8" and rejects the rest (kUnsupported). Clear this and
  /// fp8_block_size to describe the unquantised (BF16) original of an FP8 checkpoint.
  std::string quant_method;
  /// `quantization_config.weight_block_size` ([block_out, block_in], e.g. [128, 128] for
  /// DeepSeek-V3 / Kimi-K2 / Qwen3-*-FP8) when quant_method is "fp8": Linear weights are
  /// stored as F8_E4M3 with an F32 `weight_scale_inv` of [ceil(out/block_out),
  /// ceil(in/block_in)] per weight. Unset for per-tensor FP8 and unquantised models.
  std::optional<std::array<std::int64_t, 2>> fp8_block_size;

  /// Every other top-level key of config.json whose value is a scalar (number, boolean,
  /// string or null), as its JSON text (e.g. "shared_expert_intermediate_size" -> "5632",
  /// "use_qk_norm" -> "true", "sliding_window" -> "null"). Model rules files read the keys
  /// a family needs beyond the fields above from here (docs/model_rules.md);
  /// WriteModelConfig writes them back. Arrays and objects are not kept.
  std::map<std::string, std::string> extra = {};

  /// torch_dtype, or BF16 when the config does not say.
  DType dtype() const { return torch_dtype.value_or(DType::kBF16); }

  /// Field-wise equality (used to check WriteModelConfig round trips).
  bool operator==(const ModelConfig&) const = default;
};

/// Parses the text of a config.json. `source_name` (a path or label) is used in messages.
/// Errors: kCorruptData naming source_name and the key for invalid JSON, a top level that
/// is not an object, a missing required key, a value of the wrong JSON type (integers must
/// be JSON integers), a non-positive size, an unknown torch_dtype string, or hidden_size
/// not divisible by num_attention_heads when head_dim is absent.
Result<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view source_name);

/// Reads and parses the file at `path`: kIoError (naming path) if it cannot be read, else
/// as ParseModelConfig.
Result<ModelConfig> LoadModelConfig(const std::string& path);

/// Writes `config` as an HF-style config.json (canonical key names, `architectures` when
/// architecture is set, torch_dtype when set, optional fields only when set) so that a
/// generated checkpoint directory describes itself; LoadModelConfig reads back an equal
/// ModelConfig. Written to `path + ".tmp.<pid>"` then renamed. kIoError naming the path on
/// failure; kInvalidArgument if torch_dtype is not BF16/F16/F32/F64.
Status WriteModelConfig(const ModelConfig& config, const std::string& path);

}  // namespace shardwire
