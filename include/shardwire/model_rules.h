// ModelRules: a model family described as data — a YAML rules file (format:
// docs/model_rules.md) that says, from a HF config.json, which tensors a checkpoint holds
// (names, shapes, dtypes), each tensor's tensor-parallel role (column, row, vocab,
// replicated; expert index; shared expert), the fused parameters engines build (qkv_proj,
// gate_up_proj, w13, fused_qkv_a_proj_with_mqa) and how an engine stores each tensor
// (FP8 block-quantisable or not, a fixed engine dtype such as F32 routing biases).
//
// Built-in rules live in models/rules/*.yaml of the source tree and are embedded in the
// library at build time (a fresh clone needs nothing at run time). A user's file
// (`--model-rules FILE` on the CLI) is registered with AddUserModelRules and wins over the
// built-in file for the model types it names.
//
// YAML is parsed by yaml-cpp (Debian libyaml-cpp-dev), chosen over JSON because yaml-cpp
// keeps a line/column mark on every node, so every error, syntactic or semantic, names
// "<file>:<line>" of the offending rule.
//
// Thread-safety: a ModelRules is immutable and shareable across threads. The user-rules
// registry is guarded by a mutex; AddUserModelRules / ClearUserModelRules may be called
// from any thread (typically once, at start-up).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shardwire/model_config.h"
#include "shardwire/model_description.h"
#include "shardwire/status.h"
#include "shardwire/tensor_spec.h"

namespace shardwire {

namespace model {
struct RulesFile;
}

/// One parsed rules file.
class ModelRules {
 public:
  /// Parses the YAML text of a rules file; `file_name` names it in every message.
  /// Errors (all kInvalidArgument, message "<file>:<line>: ..."): YAML syntax errors, an
  /// unknown or missing key, a wrong value type, an unknown role or dtype, an expression
  /// or name pattern that does not parse, a `use` of an undefined block.
  static Result<ModelRules> Parse(std::string_view yaml_text, std::string_view file_name);
  /// Reads and parses `path`: kIoError naming path if it cannot be read, else as Parse.
  static Result<ModelRules> Load(const std::string& path);

  /// `family:` of the file (e.g. "deepseek_v3").
  const std::string& family() const;
  /// HF config `model_type` values the file describes (e.g. deepseek_v3, kimi_k2).
  const std::vector<std::string>& model_types() const;
  /// The file name given to Parse / Load.
  const std::string& file_name() const;
  /// The YAML text (for `describe --write-rules` and for shipping to worker processes).
  const std::string& text() const;

  /// Applies the rules to `config` (whose model_type need not be one of model_types()).
  /// Errors (kInvalidArgument naming "<file>:<line>" and the key or tensor): a config key
  /// the rules need is null/absent, a shape that evaluates to a non-positive size, a
  /// `require` that does not hold, two rules producing the same tensor name ("two roles
  /// for one tensor"), a fused parameter naming a tensor no rule produced; kUnsupported
  /// for a quantization_config other than block-wise fp8.
  Result<ModelDescription> Describe(const ModelConfig& config) const;

 private:
  std::shared_ptr<const model::RulesFile> file_;
};

/// The built-in rules file for `model_type`, or nullptr. The pointer stays valid for the
/// life of the process. Built-in files are parsed once, on first use.
const ModelRules* FindBuiltinModelRules(std::string_view model_type);

/// Every built-in rules file, as (file name, YAML text), in file-name order.
const std::vector<std::pair<std::string, std::string>>& BuiltinModelRulesFiles();

/// Every model_type the built-in rules files describe, sorted.
std::vector<std::string> BuiltinModelTypes();

/// Registers `rules` for the process: DescribeModel uses them for their model_types,
/// ahead of the built-in files (a later registration for the same model_type wins).
void AddUserModelRules(ModelRules rules);
/// Loads `path` and registers it (errors of ModelRules::Load; kInvalidArgument naming both
/// files when another file registered with LoadUserModelRules describes one of its
/// model_types already; the same file again is accepted).
Status LoadUserModelRules(const std::string& path);
/// Forgets every registered user rules file.
void ClearUserModelRules();
/// The rules DescribeModel would use for `model_type` (user first, then built-in), or
/// nullopt. kInternal if a built-in rules file does not parse (a build defect).
Result<std::optional<ModelRules>> FindModelRules(std::string_view model_type);

/// Checks `description` (from rules) against the tensors a checkpoint actually holds, per
/// rule: kLayoutMismatch naming the rule "<file>:<line>" and its name pattern when a rule
/// produced tensors of which none is in the checkpoint ("matches nothing"), and naming the
/// first checkpoint tensors no rule produced. OK when every rule matches at least one
/// tensor and every checkpoint tensor (but `rotary_emb.inv_freq` buffers and a tied
/// embedding copy, IsTiedEmbeddingCopy) is produced.
/// Shapes and dtypes are CheckCheckpointMatchesModel's business.
Status CheckRulesCoverCheckpoint(const ModelDescription& description, const std::vector<TensorSpec>& checkpoint_tensors,
                                 std::string_view checkpoint_name);

}  // namespace shardwire

namespace shardwire {

/// Infers a rules file for a model nobody described, from its checkpoint's tensor list
/// and its config: layer indices (`layers.N.`) and expert indices (`experts.N.`) become
/// the {layer} / {expert} placeholders; each remaining name's module gives the role by
/// the usual Hugging Face names (column: q/k/v_proj, gate/up_proj, w1/w3, q_b_proj,
/// kv_b_proj; row: o_proj, down_proj, w2; vocab: embed_tokens, lm_head, shared_head.head;
/// replicated: norms, routers `mlp.gate` / `block_sparse_moe.gate`, q_a_proj,
/// kv_a_proj_with_mqa, eh_proj, shared_expert_gate, e_score_correction_bias, biases of
/// row-parallel layers); every dimension must equal a config expression (hidden_size,
/// num_attention_heads * head_dim, moe_intermediate_size, ...), the layer loop must match
/// num_hidden_layers (plus MTP layers after it) and the expert loop the expert count; q/k/v
/// and gate/up (w1/w3) under one module become fused parameters. The result is a rules
/// file (text() is its YAML) that, applied to `config`, describes exactly the
/// checkpoint's tensors. Nothing is guessed silently: a tensor it cannot place is
/// kInvalidArgument naming the tensor and saying which rule would place it; a dimension no
/// config expression gives is kInvalidArgument naming tensor, dimension and value.
/// `config.model_type` names the family. Pure function.
Result<ModelRules> InferModelRules(const ModelConfig& config, const std::vector<TensorSpec>& checkpoint_tensors,
                                   std::string_view checkpoint_name);

}  // namespace shardwire
