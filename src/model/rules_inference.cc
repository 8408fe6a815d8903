// InferModelRules: a rules file for a checkpoint whose family has none, from the usual
// Hugging Face module names and the config (see shardwire/model_rules.h). The inferred
// file is re-applied to the config and must reproduce the checkpoint exactly.
#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include <fmt/format.h>

#include "shardwire/model_rules.h"

namespace shardwire {
namespace {

bool AllDigits(std::string_view s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = s.find('.', start);
    out.push_back(s.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return out;
}

struct Template {
  std::string pattern;  // with {layer} / {expert}
  std::string module;   // the module's own name (token before weight/bias)
  std::string suffix;   // weight, bias, e_score_correction_bias
  std::vector<std::int64_t> shape;
  DType dtype = DType::kF32;
  std::set<int> layers;
  std::set<int> experts;
  bool has_layer = false, has_expert = false;
  std::string first;  // first concrete name (for messages)
  std::size_t order = 0;
};

// Role by module name; nullopt when the name is not one of the usual ones.
std::optional<ParallelRole> RoleOf(const Template& t, const std::string& parent) {
  using R = ParallelRole;
  const std::string& m = t.module;
  if (t.suffix == "e_score_correction_bias") return R::kReplicated;
  if (m.find("norm") != std::string::npos) return R::kReplicated;
  if (m == "embed_tokens" || m == "lm_head" || (m == "head" && parent == "shared_head")) return R::kVocab;
  const bool bias = t.suffix == "bias";
  static const std::set<std::string> kColumn = {"q_proj", "k_proj", "v_proj",   "gate_proj", "up_proj",
                                                "w1",     "w3",     "q_b_proj", "kv_b_proj"};
  static const std::set<std::string> kRow = {"o_proj", "down_proj", "w2"};
  static const std::set<std::string> kReplicatedLinear = {"q_a_proj", "kv_a_proj_with_mqa", "eh_proj",
                                                          "shared_expert_gate"};
  if (kColumn.count(m) > 0) return R::kColumn;
  if (kRow.count(m) > 0) return bias ? R::kReplicated : R::kRow;
  if (kReplicatedLinear.count(m) > 0) return R::kReplicated;
  if (m == "gate" && (parent == "mlp" || parent == "block_sparse_moe")) return R::kReplicated;  // MoE router
  return std::nullopt;
}

struct Candidate {
  std::string expr;
  std::int64_t value;
};

std::vector<Candidate> Candidates(const ModelConfig& c) {
  std::vector<Candidate> out;
  auto add = [&](std::string e, std::optional<std::int64_t> v) {
    if (v.has_value() && *v > 0) out.push_back({std::move(e), *v});
  };
  const std::int64_t h = c.num_attention_heads;
  add("hidden_size", c.hidden_size);
  add("vocab_size", c.vocab_size);
  add("intermediate_size", c.intermediate_size);
  add("moe_intermediate_size", c.moe_intermediate_size);
  add("num_attention_heads * head_dim", h * c.head_dim);
  add("num_key_value_heads * head_dim", c.num_key_value_heads * c.head_dim);
  add("head_dim", c.head_dim);
  add("num_experts", c.num_experts);
  add("q_lora_rank", c.q_lora_rank);
  add("kv_lora_rank", c.kv_lora_rank);
  if (c.kv_lora_rank && c.qk_rope_head_dim) {
    add("kv_lora_rank + qk_rope_head_dim", *c.kv_lora_rank + *c.qk_rope_head_dim);
  }
  if (c.qk_nope_head_dim && c.qk_rope_head_dim) {
    add("num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim)", h * (*c.qk_nope_head_dim + *c.qk_rope_head_dim));
  }
  if (c.qk_nope_head_dim && c.v_head_dim) {
    add("num_attention_heads * (qk_nope_head_dim + v_head_dim)", h * (*c.qk_nope_head_dim + *c.v_head_dim));
  }
  if (c.v_head_dim) add("num_attention_heads * v_head_dim", h * *c.v_head_dim);
  add("2 * hidden_size", 2 * c.hidden_size);
  if (c.moe_intermediate_size && c.n_shared_experts) {
    add("moe_intermediate_size * n_shared_experts", *c.moe_intermediate_size * *c.n_shared_experts);
  }
  if (auto it = c.extra.find("shared_expert_intermediate_size"); it != c.extra.end() && AllDigits(it->second)) {
    add("shared_expert_intermediate_size", std::stoll(it->second));
  }
  add("1", 1);
  return out;
}

// The config expressions a usual Hugging Face module's dimensions come from, most likely first
// (modeling_llama.py, modeling_qwen3.py / qwen3_moe, modeling_deepseek_v2.py / v3): when a
// dimension's value equals several config values (a tiny model's intermediate_size equal to
// num_attention_heads * head_dim, its head_dim equal to num_experts), the module's own wins over
// whichever the candidate list happens to name first. Per dimension of the tensor: a weight is
// [out, in] (nn.Linear), stacked experts [num_experts, out, in], a bias or norm [out].
// `in_experts`: under experts.N; `parent`: the module above (shared_experts, shared_expert).
std::vector<std::string> PreferredExpressions(const std::string& module, const std::string& parent, bool in_experts,
                                              std::size_t dim, std::size_t rank) {
  struct Sides {
    std::vector<std::string> out, in;
  };
  const std::string heads_q = "num_attention_heads * (qk_nope_head_dim + qk_rope_head_dim)";
  static const std::map<std::string, Sides> kByModule = {
      {"q_proj", {{"num_attention_heads * head_dim", heads_q}, {"hidden_size"}}},
      {"k_proj", {{"num_key_value_heads * head_dim"}, {"hidden_size"}}},
      {"v_proj", {{"num_key_value_heads * head_dim"}, {"hidden_size"}}},
      {"o_proj", {{"hidden_size"}, {"num_attention_heads * head_dim", "num_attention_heads * v_head_dim"}}},
      {"q_norm", {{"head_dim"}, {}}},
      {"k_norm", {{"head_dim"}, {}}},
      {"q_a_proj", {{"q_lora_rank"}, {"hidden_size"}}},
      {"q_a_layernorm", {{"q_lora_rank"}, {}}},
      {"q_b_proj", {{heads_q}, {"q_lora_rank"}}},
      {"kv_a_proj_with_mqa", {{"kv_lora_rank + qk_rope_head_dim"}, {"hidden_size"}}},
      {"kv_a_layernorm", {{"kv_lora_rank"}, {}}},
      {"kv_b_proj", {{"num_attention_heads * (qk_nope_head_dim + v_head_dim)"}, {"kv_lora_rank"}}},
      {"gate", {{"num_experts"}, {"hidden_size"}}},  // the MoE router
      {"e_score_correction_bias", {{"num_experts"}, {}}},
      {"embed_tokens", {{"vocab_size"}, {"hidden_size"}}},
      {"lm_head", {{"vocab_size"}, {"hidden_size"}}},
      {"head", {{"vocab_size"}, {"hidden_size"}}},
      {"eh_proj", {{"hidden_size"}, {"2 * hidden_size"}}},
      {"shared_expert_gate", {{"1"}, {"hidden_size"}}},
  };
  Sides sides;
  if (auto it = kByModule.find(module); it != kByModule.end()) {
    sides = it->second;
  } else {
    std::string inter = "intermediate_size";
    if (in_experts) inter = "moe_intermediate_size";
    if (parent == "shared_experts") inter = "moe_intermediate_size * n_shared_experts";
    if (parent == "shared_expert") inter = "shared_expert_intermediate_size";
    if (module == "gate_proj" || module == "up_proj" || module == "w1" || module == "w3") {
      sides = {{inter}, {"hidden_size"}};
    } else if (module == "down_proj" || module == "w2") {
      sides = {{"hidden_size"}, {inter}};
    } else {
      sides = {{"hidden_size"}, {"hidden_size"}};  // other norms and biases
    }
  }
  if (rank == 3) {  // stacked experts
    if (dim == 0) return {"num_experts"};
    --dim;
  }
  return dim == 0 ? sides.out : sides.in;
}

// "(layer >= a && layer < b) || ..." for a set of layers, "" when it is all of [0, count).
std::string LayerCondition(const std::set<int>& layers, int count) {
  if (static_cast<int>(layers.size()) == count) return "";
  std::vector<std::string> ranges;
  auto it = layers.begin();
  while (it != layers.end()) {
    const int a = *it;
    int b = a;
    while (std::next(it) != layers.end() && *std::next(it) == b + 1) {
      ++it;
      ++b;
    }
    ++it;
    ranges.push_back(a == b ? fmt::format("layer == {}", a) : fmt::format("(layer >= {} && layer <= {})", a, b));
  }
  return fmt::format("{}", fmt::join(ranges, " || "));
}

}  // namespace

Result<ModelRules> InferModelRules(const ModelConfig& config, const std::vector<TensorSpec>& checkpoint_tensors,
                                   std::string_view checkpoint_name) {
  const std::string family = config.model_type.empty() ? "inferred" : config.model_type;
  std::map<std::string, Template> templates;
  std::size_t order = 0;
  for (const TensorSpec& spec : checkpoint_tensors) {
    const std::string_view n = spec.name;
    if (n.size() >= 19 && n.substr(n.size() - 19) == "rotary_emb.inv_freq") continue;
    // A tied lm_head stored anyway is the embedding (CheckCheckpointMatchesModel accepts it).
    if (config.tie_word_embeddings && n == "lm_head.weight") continue;
    std::vector<std::string> parts = Split(spec.name);
    int layer = -1, expert = -1;
    for (std::size_t i = 0; i < parts.size(); ++i) {
      if (!AllDigits(parts[i])) continue;
      const std::string& prev = i > 0 ? parts[i - 1] : "";
      if ((prev == "layers" || prev == "h") && layer < 0) {
        layer = std::stoi(parts[i]);
        parts[i] = "{layer}";
      } else if (prev == "experts" && expert < 0) {
        expert = std::stoi(parts[i]);
        parts[i] = "{expert}";
      } else {
        return InvalidArgument(fmt::format(
            "{}: cannot place tensor {}: index {} follows \"{}\", neither layers.N nor experts.N; write a rules file "
            "with a `for` loop over it (docs/model_rules.md)",
            checkpoint_name, spec.name, parts[i], prev));
      }
    }
    if (parts.size() < 2) {
      return InvalidArgument(
          fmt::format("{}: cannot place tensor {}: not a <module>.weight / .bias name; write a "
                      "`tensor:` rule for it (docs/model_rules.md)",
                      checkpoint_name, spec.name));
    }
    const std::string pattern = fmt::format("{}", fmt::join(parts, "."));
    Template& t = templates[pattern];
    if (t.pattern.empty()) {
      t.pattern = pattern;
      t.suffix = parts.back();
      t.module = parts[parts.size() - 2];
      t.shape = spec.shape;
      t.dtype = spec.dtype;
      t.first = spec.name;
      t.order = order++;
    } else if (t.shape != spec.shape || t.dtype != spec.dtype) {
      return InvalidArgument(
          fmt::format("{}: cannot place tensor {}: its dtype/shape differs from {} of the same "
                      "pattern {}; write explicit rules for them",
                      checkpoint_name, spec.name, t.first, pattern));
    }
    t.has_layer = layer >= 0;
    t.has_expert = expert >= 0;
    if (layer >= 0) t.layers.insert(layer);
    if (expert >= 0) t.experts.insert(expert);
  }

  // Layer loop count: num_hidden_layers, plus any MTP-style layers stored after them.
  int max_layer = -1;
  for (const auto& [p, t] : templates) {
    if (!t.layers.empty()) max_layer = std::max(max_layer, *t.layers.rbegin());
  }
  const int num_layers = static_cast<int>(config.num_hidden_layers);
  if (max_layer >= 0 && max_layer + 1 < num_layers) {
    return InvalidArgument(fmt::format("{}: the checkpoint holds layers 0..{} but num_hidden_layers is {}",
                                       checkpoint_name, max_layer, num_layers));
  }
  const int loop_count = std::max(max_layer + 1, 0);
  const std::string count_expr =
      loop_count == num_layers ? "num_hidden_layers" : fmt::format("num_hidden_layers + {}", loop_count - num_layers);

  const std::vector<Candidate> candidates = Candidates(config);
  std::vector<const Template*> ordered;
  for (const auto& [p, t] : templates) ordered.push_back(&t);
  std::sort(ordered.begin(), ordered.end(), [](const Template* a, const Template* b) { return a->order < b->order; });

  auto rule_for = [&](const Template& t, const std::string& indent, std::string* out) -> Status {
    const std::vector<std::string> parts = Split(t.pattern);
    const std::string parent = parts.size() >= 3 ? parts[parts.size() - 3] : "";
    const std::optional<ParallelRole> role = RoleOf(t, parent);
    if (!role.has_value() || (t.suffix != "weight" && t.suffix != "bias" && t.suffix != "e_score_correction_bias")) {
      return InvalidArgument(fmt::format(
          "{}: cannot place tensor {} {}[{}]: \"{}\" is not one of the usual Hugging Face module names (q/k/v/o_proj, "
          "gate/up/down_proj, w1/w2/w3, experts.N, embed_tokens, lm_head, norms, biases); a rule such as\n"
          "  - tensor: {}\n    shape: [...]\n    role: column|row|vocab|replicated\nin a rules file passed with "
          "--model-rules would place it",
          checkpoint_name, t.first, DTypeName(t.dtype), fmt::join(t.shape, ", "), t.module + "." + t.suffix,
          t.pattern));
    }
    std::vector<std::string> dims;
    std::vector<std::string> ambiguous;  // dims whose value several config values give, none the module's own
    for (std::size_t d = 0; d < t.shape.size(); ++d) {
      const std::vector<std::string> preferred = PreferredExpressions(
          t.suffix == "e_score_correction_bias" ? t.suffix : t.module, parent, t.has_expert, d, t.shape.size());
      std::vector<const Candidate*> matching;
      for (const Candidate& c : candidates) {
        if (c.value == t.shape[d]) matching.push_back(&c);
      }
      const Candidate* chosen = nullptr;
      for (const std::string& e : preferred) {
        for (const Candidate* c : matching) {
          if (chosen == nullptr && c->expr == e) chosen = c;
        }
      }
      if (chosen == nullptr && !matching.empty()) {
        chosen = matching.front();
        if (matching.size() > 1) {
          std::vector<std::string> others;
          for (std::size_t i = 1; i < matching.size(); ++i) others.push_back(matching[i]->expr);
          ambiguous.push_back(
              fmt::format("dim {} = {} is {} here, and also {}", d, t.shape[d], chosen->expr, fmt::join(others, ", ")));
        }
      }
      if (chosen == nullptr) {
        return InvalidArgument(
            fmt::format("{}: cannot place tensor {}: dim {} is {}, which no config value gives "
                        "(hidden_size, heads * head_dim, intermediate sizes, ...); the config does "
                        "not describe this checkpoint, or a rule with an explicit shape is needed",
                        checkpoint_name, t.first, d, t.shape[d]));
      }
      dims.push_back(chosen->expr);
    }
    const bool weight2d = t.suffix == "weight" && t.shape.size() == 2;
    // As DeepSeek-V3's FP8 release stores them: every linear of a layer in FP8, the MLA's replicated
    // down-projections too; not the MTP's eh_proj nor Qwen2-MoE's one-row shared_expert_gate.
    const bool quantized = weight2d && (*role == ParallelRole::kColumn || *role == ParallelRole::kRow ||
                                        t.module == "q_a_proj" || t.module == "kv_a_proj_with_mqa");
    for (const std::string& a : ambiguous) {
      *out += fmt::format("{}# check: {} (the config gives this value several ways)\n", indent, a);
    }
    *out += fmt::format("{}- tensor: \"{}\"\n{}  shape: [{}]\n{}  role: {}\n", indent, t.pattern, indent,
                        fmt::join(dims, ", "), indent, ParallelRoleName(*role));
    if (t.dtype != config.dtype()) *out += fmt::format("{}  dtype: {}\n", indent, DTypeName(t.dtype));
    if (t.suffix == "e_score_correction_bias") *out += fmt::format("{}  engine_dtype: F32\n", indent);
    if (quantized) *out += fmt::format("{}  quantized: true\n", indent);
    if (t.has_layer) {
      const std::string cond = LayerCondition(t.layers, loop_count);
      if (!cond.empty()) *out += fmt::format("{}  when: \"{}\"\n", indent, cond);
    }
    return Status::Ok();
  };

  // Fused parameters for q/k/v and gate/up (w1/w3) found under one module prefix.
  auto fuses_for = [&](bool experts, const std::string& indent, std::string* out) {
    static const std::vector<std::pair<std::vector<std::string>, std::string>> kFusions = {
        {{"q_proj", "k_proj", "v_proj"}, "qkv_proj"},
        {{"gate_proj", "up_proj"}, "gate_up_proj"},
        {{"w1", "w3"}, "gate_up_proj"}};
    for (const Template* t : ordered) {
      if (t->has_expert != experts || !t->has_layer || t->suffix != "weight") continue;
      for (const auto& [members, fused] : kFusions) {
        if (t->module != members[0]) continue;
        const std::string prefix = t->pattern.substr(0, t->pattern.size() - members[0].size() - 7);
        bool all = true, bias = true;
        for (const auto& m : members) {
          const auto it = templates.find(prefix + m + ".weight");
          all = all && it != templates.end() && it->second.layers == t->layers;
          bias = bias && templates.count(prefix + m + ".bias") > 0;
        }
        if (!all) continue;
        std::vector<std::string> parts;
        for (const auto& m : members) parts.push_back("\"" + prefix + m + "\"");
        *out +=
            fmt::format("{}- fuse: \"{}{}\"\n{}  parts: [{}]\n", indent, prefix, fused, indent, fmt::join(parts, ", "));
        if (bias) *out += fmt::format("{}  bias: true\n", indent);
        const std::string cond = LayerCondition(t->layers, loop_count);
        if (!cond.empty()) *out += fmt::format("{}  when: \"{}\"\n", indent, cond);
      }
    }
  };

  std::string before, body, experts_body, after;
  std::set<int> expert_layers;
  for (const Template* t : ordered) {
    if (t->has_expert) {
      if (!t->has_layer) {
        return InvalidArgument(
            fmt::format("{}: cannot place tensor {}: experts outside a decoder layer; write a rules "
                        "file with a `for: expert` loop",
                        checkpoint_name, t->first));
      }
      const std::int64_t n = config.num_experts.value_or(0);
      if (static_cast<std::int64_t>(t->experts.size()) != n || *t->experts.rbegin() + 1 != n) {
        return InvalidArgument(
            fmt::format("{}: tensor {}: the checkpoint holds {} experts of this pattern but the "
                        "config's expert count (num_experts / num_local_experts / n_routed_experts) "
                        "is {}",
                        checkpoint_name, t->first, t->experts.size(), n));
      }
      expert_layers.insert(t->layers.begin(), t->layers.end());
      SW_RETURN_IF_ERROR(rule_for(*t, "          ", &experts_body));
    } else if (t->has_layer) {
      SW_RETURN_IF_ERROR(rule_for(*t, "      ", &body));
    } else {
      std::string* where = t->module == "embed_tokens" ? &before : &after;
      SW_RETURN_IF_ERROR(rule_for(*t, "  ", where));
    }
  }
  fuses_for(false, "      ", &body);
  fuses_for(true, "          ", &experts_body);
  if (!experts_body.empty()) {
    body += "      - for: expert\n        count: num_experts\n        do:\n" + experts_body;
  }

  std::string text = fmt::format(
      "# Inferred by `shardwire describe` from {} and its config (model_type {}).\n"
      "# Review it: roles come from the usual Hugging Face module names, shapes from the config.\n"
      "family: {}\nmodel_types: [{}]\nsource: \"inferred from {}\"\n\ntensors:\n",
      checkpoint_name, family, family, family, checkpoint_name);
  text += before;
  if (!body.empty()) {
    text += fmt::format("  - for: layer\n    count: {}\n    do:\n", count_expr) + body;
  }
  text += after;

  SW_ASSIGN_OR_RETURN(ModelRules rules, ModelRules::Parse(text, fmt::format("<inferred from {}>", checkpoint_name)));
  // The inferred rules must reproduce the checkpoint exactly.
  Result<ModelDescription> d = rules.Describe(config);
  if (!d.ok()) return Internal(fmt::format("inferred rules do not apply: {}", d.status().message()));
  SW_RETURN_IF_ERROR(CheckCheckpointMatchesModel(*d, checkpoint_tensors, checkpoint_name));
  return rules;
}

}  // namespace shardwire
