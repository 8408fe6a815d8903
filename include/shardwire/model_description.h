// ModelDescription: the list of a model's parameter tensors, derived from its ModelConfig,
// each with the role it plays under tensor parallelism (TP).
//
// Names and shapes follow HF transformers' modeling code (LlamaForCausalLM,
// MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM): nn.Linear weights are
// [out_features, in_features]. Roles follow Megatron-LM / vLLM tensor parallelism:
// column-parallel layers split their output features (dim 0), row-parallel layers their
// input features (dim 1), vocabulary-parallel embeddings split the vocabulary (dim 0).
//
// Families supported now: dense decoders with model_type llama, mistral, qwen2, qwen3.
// Each family is one function in its own source file, registered in one table, so MoE /
// MLA families are added by adding a file and a table entry.
//
// Thread-safety: plain values and pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/model_config.h"
#include "shardwire/status.h"
#include "shardwire/tensor_spec.h"

namespace shardwire {

/// How tensor parallelism splits a tensor.
enum class ParallelRole {
  kColumn,      ///< split on dim 0: q/k/v_proj, gate/up_proj weights and their biases
  kRow,         ///< split on dim 1: o_proj, down_proj weights (their biases are kReplicated)
  kVocab,       ///< split on dim 0 (vocabulary): embed_tokens, lm_head
  kReplicated,  ///< every rank holds it whole: norms, q_norm/k_norm, row-parallel biases
};

/// "column", "row", "vocab" or "replicated".
std::string_view ParallelRoleName(ParallelRole role);

/// The dimension TP splits: 0 (kColumn), 1 (kRow), 0 (kVocab), -1 (kReplicated).
int ShardDim(ParallelRole role);

/// One parameter tensor of a model.
struct ModelTensor {
  TensorSpec spec;  ///< HF name, dtype (config.dtype()), global shape
  ParallelRole role = ParallelRole::kReplicated;  ///< how TP splits it
  int layer = -1;  ///< decoder layer index, -1 for tensors outside the layers

  /// Field-wise equality.
  bool operator==(const ModelTensor&) const = default;
};

/// A model's config and its parameter tensors.
struct ModelDescription {
  ModelConfig config;  ///< the config the tensors were derived from
  /// Deterministic order: embed_tokens, then each layer in order (input_layernorm,
  /// q, k, v (each followed by its bias when present)[, q_norm, k_norm], o[, o bias],
  /// post_attention_layernorm, gate, up, down (each followed by its bias when present)),
  /// then the final norm, then lm_head (absent when tie_word_embeddings).
  std::vector<ModelTensor> tensors;

  /// The tensor called `name`, or nullptr. Linear scan (O(number of tensors)).
  const ModelTensor* Find(std::string_view name) const;

  /// Sum of spec.nbytes() over all tensors (bytes).
  std::uint64_t total_bytes() const;

  /// Sum of spec.numel() over all tensors (parameter count).
  std::uint64_t total_params() const;
};

/// Builds the tensor list for `config`, every tensor of dtype config.dtype().
/// Errors: kUnsupported naming the model_type when no family handles it (MoE and MLA
/// families such as qwen3_moe, mixtral, deepseek_v3 come later); kInvalidArgument when
/// sizes are not positive.
Result<ModelDescription> DescribeModel(const ModelConfig& config);

/// The same model with `num_layers` decoder layers (e.g. Llama-3.1-8B's shapes with 4
/// layers): re-describes config with num_hidden_layers replaced. kInvalidArgument if
/// num_layers < 1; otherwise the errors of DescribeModel.
Result<ModelDescription> WithLayers(const ModelDescription& description, int num_layers);

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
