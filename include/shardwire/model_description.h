// ModelDescription: the list of a model's parameter tensors, derived from its ModelConfig,
// each with the role it plays under tensor parallelism (TP) and expert parallelism (EP),
// plus the fused parameters inference engines build from them.
//
// Names and shapes follow HF transformers' modeling code and the real checkpoints
// (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
// Qwen3MoeForCausalLM, MixtralForCausalLM, DeepseekV2/V3ForCausalLM; Kimi-K2 is a
// DeepseekV3ForCausalLM): nn.Linear weights are [out_features, in_features]. Roles follow
// Megatron-LM / vLLM tensor parallelism: column-parallel layers split their output
// features (dim 0), row-parallel layers their input features (dim 1), vocabulary-parallel
// embeddings split the vocabulary (dim 0). Routed experts carry their expert index (EP
// places whole experts on ranks; within an expert the gate/up/down roles still apply).
//
// Families supported: model_type llama, mistral, qwen2, qwen3 (dense), qwen3_moe,
// mixtral (MoE), deepseek_v2, deepseek_v3, kimi_k2 (MLA + MoE, DeepSeek-V3 MTP layers).
// FP8 block-quantised checkpoints (quantization_config quant_method "fp8" with
// weight_block_size, as DeepSeek-V3, Kimi-K2 and Qwen3-*-FP8 ship) are described with
// their F8_E4M3 weights and F32 `weight_scale_inv` tensors. Each family is data: a rules
// file in models/rules/ (format: docs/model_rules.md, API: shardwire/model_rules.h),
// embedded in the library at build time; more families are described there (glm4_moe,
// qwen2_moe, olmo2, phi3, gemma2, ...), and users add their own with --model-rules.
//
// Thread-safety: plain values and pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/model_config.h"
#include "shardwire/status.h"
#include "shardwire/tensor_spec.h"

namespace shardwire {

/// How tensor parallelism splits a tensor.
enum class ParallelRole {
  /// split on dim 0: q/k/v_proj, gate/up_proj (also of experts), MLA q_proj / q_b_proj /
  /// kv_b_proj weights, and their biases
  kColumn,
  kRow,    ///< split on dim 1: o_proj, down_proj weights (their biases are kReplicated)
  kVocab,  ///< split on dim 0 (vocabulary): embed_tokens, lm_head, MTP shared_head.head
  /// every rank holds it whole: norms, q_norm/k_norm, row-parallel biases, MoE routers,
  /// MLA q_a_proj / kv_a_proj_with_mqa, MTP eh_proj
  kReplicated,
};

/// "column", "row", "vocab" or "replicated".
std::string_view ParallelRoleName(ParallelRole role);

/// The dimension TP splits: 0 (kColumn), 1 (kRow), 0 (kVocab), -1 (kReplicated).
int ShardDim(ParallelRole role);

/// One parameter tensor of a model.
struct ModelTensor {
  /// HF name, dtype, global shape. The dtype is config.dtype(), except: FP8-quantised
  /// Linear weights are F8_E4M3 and their scales F32; DeepSeek-V3's
  /// `mlp.gate.e_score_correction_bias` is F32 (as in the real checkpoint).
  TensorSpec spec;
  ParallelRole role = ParallelRole::kReplicated;  ///< how TP splits it
  /// Decoder layer index, -1 for tensors outside the layers. DeepSeek-V3's MTP modules are
  /// layers num_hidden_layers, num_hidden_layers + 1, ... (the checkpoint's numbering).
  int layer = -1;
  /// Routed expert index (`...experts.{e}...`, the unit expert parallelism places), -1 for
  /// everything else (attention, dense MLPs, routers, shared experts).
  int expert = -1;
  /// True for the tensors of DeepSeek's always-active `mlp.shared_experts` MLP (usually
  /// held like a dense MLP: TP-split, replicated across EP ranks); false otherwise.
  bool shared_expert = false;
  /// For an FP8 block scale (`<module>.weight_scale_inv`, F32 [ceil(out/block_out),
  /// ceil(in/block_in)]): the name of the weight it scales (`<module>.weight`); the scale
  /// carries that weight's role, layer, expert and shared_expert. Empty otherwise.
  std::string scale_of = {};
  /// What an inference engine does with this tensor (from the family's rules file,
  /// docs/model_rules.md), for the convert / push side:
  /// true when an FP8 block-quantised engine (quantization_config fp8 with
  /// weight_block_size) stores this weight as F8_E4M3 with a `weight_scale_inv` beside it
  /// (attention and MLP / expert Linear weights); false for embeddings, norms, routers,
  /// biases, lm_head and scales. Independent of whether this checkpoint is itself FP8.
  bool quantizable = false;
  /// The dtype the engine stores the tensor in when it is fixed regardless of the model's
  /// dtype (e.g. F32 for DeepSeek-V3 / GLM-4.5's `e_score_correction_bias`, which vLLM
  /// allocates in float32); unset: the engine's model dtype (or FP8 when quantizable).
  std::optional<DType> engine_dtype = {};
  /// Index into ModelDescription::rules of the rule that produced this tensor, -1 if
  /// none (for error messages naming "<rules file>:<line>").
  int rule = -1;

  /// Field-wise equality.
  bool operator==(const ModelTensor&) const = default;
};

/// A parameter that inference engines hold as the concatenation of several checkpoint
/// tensors on dim 0, in `parts` order. Conventions follow vLLM's QKVParallelLinear
/// (qkv_proj = [q_proj; k_proj; v_proj]), MergedColumnParallelLinear (gate_up_proj =
/// [gate_proj; up_proj]; DeepSeek MLA's [q_a_proj; kv_a_proj_with_mqa]) and FusedMoE (per
/// expert w13 = [gate_proj (w1); up_proj (w3)]); SGLang names the MLA fusion
/// `fused_qkv_a_proj_with_mqa` (vLLM: `fused_qkv_a_proj`). Names are the HF module path
/// with the fused module name:
///  * `model.layers.{i}.self_attn.qkv_proj.{weight,bias}` (dense attention),
///  * `model.layers.{i}.mlp.gate_up_proj.weight` (dense MLP; `.bias` with mlp_bias),
///  * `model.layers.{i}.mlp.experts.{e}.gate_up_proj.weight` (Mixtral:
///    `block_sparse_moe.experts.{e}.gate_up_proj.weight` = [w1; w3]),
///  * `model.layers.{i}.mlp.shared_experts.gate_up_proj.weight`,
///  * `model.layers.{i}.self_attn.fused_qkv_a_proj_with_mqa.weight` (MLA with q_lora_rank).
/// FP8 checkpoints also get `...weight_scale_inv` entries fusing the parts' scales in the
/// same order. The global concatenation is what a TP=1 engine holds; with TP > 1 each rank
/// holds the concatenation of each part's own TP shard (vLLM loads every part through its
/// shard_id), which is not a contiguous slice of the global concatenation.
struct FusedParameter {
  std::string name;                ///< e.g. model.layers.0.self_attn.qkv_proj.weight
  std::vector<std::string> parts;  ///< HF tensor names concatenated on dim 0, in order

  bool operator==(const FusedParameter&) const = default;
};

/// A model's config and its parameter tensors.
struct ModelDescription {
  ModelConfig config;  ///< the config the tensors were derived from
  /// Deterministic order: embed_tokens, then each layer in order (input_layernorm,
  /// attention: q, k, v[, q_norm, k_norm], o (MLA: q_proj or q_a_proj, q_a_layernorm,
  /// q_b_proj, then kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj),
  /// post_attention_layernorm, MLP: gate, up, down (MoE: router gate[,
  /// e_score_correction_bias], experts 0..n-1 each gate, up, down (Mixtral w1, w2, w3), then
  /// shared_experts gate, up, down)), then the final norm, then lm_head (absent when
  /// tie_word_embeddings), then DeepSeek-V3 MTP layers (embed_tokens, enorm, hnorm,
  /// eh_proj, a decoder layer as above, shared_head.norm, shared_head.head). Every Linear
  /// weight is followed by its weight_scale_inv (FP8) and then its bias, when present.
  std::vector<ModelTensor> tensors;
  /// Fused parameters, per layer in layer order (see FusedParameter). Every part names a
  /// tensor of `tensors`.
  std::vector<FusedParameter> fused = {};
  /// "<rules file>:<line>" of each rule that produced tensors (ModelTensor::rule indexes it).
  std::vector<std::string> rules = {};

  /// The tensor called `name`, or nullptr. Linear scan (O(number of tensors), ~90k for
  /// DeepSeek-V3): fine for a few look-ups; callers looking up many names should build
  /// their own name -> index map once (there is no cached index, so `tensors` stays a
  /// plain, freely editable vector).
  const ModelTensor* Find(std::string_view name) const;

  /// Sum of spec.nbytes() over all tensors (bytes).
  std::uint64_t total_bytes() const;

  /// Sum of spec.numel() over all tensors (elements, FP8 scale tensors included).
  std::uint64_t total_params() const;
};

/// Largest value DescribeModel accepts for any size or count of a config (hidden size,
/// vocabulary, layers, experts, ranks, ...): 2^20, 16x the largest real model's largest
/// size (vocab_size 256k excepted: 4x). Three such factors stay below 2^63 elements.
inline constexpr std::int64_t kMaxModelDimension = std::int64_t{1} << 20;

/// Largest number of tensors DescribeModel builds (an upper estimate from the layer and
/// expert counts is checked before building): 2^20, about 10x DeepSeek-V3 in FP8.
inline constexpr std::int64_t kMaxModelTensors = std::int64_t{1} << 20;

/// Builds the tensor list and fused parameters for `config` (dtypes as in ModelTensor::spec)
/// from the rules of its model_type: a user's rules file registered with
/// AddUserModelRules (shardwire/model_rules.h) first, then the built-in rules files.
/// Runs in time linear in the number of tensors (DeepSeek-V3: ~92k tensors).
/// Errors: kUnsupported naming the model_type when no rules handle it, or naming the
/// quant_method when it is neither "" nor block-wise "fp8"; kInvalidArgument when sizes
/// are not positive or a field the family needs is missing (e.g. moe_intermediate_size,
/// kv_lora_rank; the message names the key and the rules file and line that needs it), when
/// a size or count exceeds kMaxModelDimension, or when the layer and expert counts could make
/// more than kMaxModelTensors tensors (a config.json is untrusted; these bounds keep shapes
/// from overflowing and the work bounded).
Result<ModelDescription> DescribeModel(const ModelConfig& config);

/// The same model with `num_layers` decoder layers (e.g. Llama-3.1-8B's shapes with 4
/// layers): re-describes config with num_hidden_layers replaced. kInvalidArgument if
/// num_layers < 1; otherwise the errors of DescribeModel.
Result<ModelDescription> WithLayers(const ModelDescription& description, int num_layers);

/// Whether checkpoint tensor `spec` is the tied copy of the embedding a model with
/// tie_word_embeddings may carry: `lm_head.weight` with the dtype and shape of
/// `model.embed_tokens.weight` (some writers store it; transformers loads it into the shared
/// parameter, vLLM's loaders skip it). Pure; thread-safe.
bool IsTiedEmbeddingCopy(const ModelDescription& description, const TensorSpec& spec);

/// Compares a checkpoint's tensors with the description. OK when the sets of names are
/// equal and every shape and dtype agrees. Otherwise kLayoutMismatch whose message names
/// checkpoint_name, counts the differences ("N differences") and lists the first 8:
/// "missing <name> <dtype>[shape]", "unexpected <name> ...", "shape of <name>: expected
/// [..] found [..]", "dtype of <name>: expected BF16 found F32".
/// Documented exceptions, not counted as differences:
///  * non-parameter buffers saved by old transformers versions (names ending in
///    `rotary_emb.inv_freq`) are ignored;
///  * with tie_word_embeddings, an explicit `lm_head.weight` whose dtype and shape equal
///    those of `model.embed_tokens.weight` is accepted (some writers store the tied copy;
///    transformers loads it into the shared parameter).
Status CheckCheckpointMatchesModel(const ModelDescription& description,
                                   const std::vector<TensorSpec>& checkpoint_tensors,
                                   std::string_view checkpoint_name);

}  // namespace shardwire
