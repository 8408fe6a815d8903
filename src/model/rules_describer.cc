// Applies a RulesFile to a ModelConfig: walks the rule tree in order with a stack of
// bound variables (loop variables, block parameters, `prefix`), expanding `{name}`
// patterns and evaluating shape expressions, and emits ModelTensors / FusedParameters in
// exactly the order the rules list them.
#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "model/rules_file.h"

namespace shardwire::model {
namespace {

constexpr std::string_view kScaleSuffix = ".weight_scale_inv";

std::int64_t CeilDiv(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

RuleValue OptInt(const std::optional<std::int64_t>& v) { return v ? RuleValue::Int(*v) : RuleValue::Null(); }

// config.extra JSON text -> value (integers, booleans, null, strings; other numbers are
// kept as strings so that using them in arithmetic is a type error, not a silent cast).
RuleValue ExtraValue(const std::string& text) {
  if (text == "null") return RuleValue::Null();
  if (text == "true") return RuleValue::Bool(true);
  if (text == "false") return RuleValue::Bool(false);
  if (!text.empty() && text.front() == '"' && text.back() == '"' && text.size() >= 2) {
    return RuleValue::String(text.substr(1, text.size() - 2));
  }
  std::int64_t v = 0;
  std::size_t i = text[0] == '-' ? 1 : 0;
  if (i == text.size()) return RuleValue::String(text);
  for (; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9' || v > (INT64_MAX - 9) / 10) return RuleValue::String(text);
    v = v * 10 + (text[i] - '0');
  }
  return RuleValue::Int(text[0] == '-' ? -v : v);
}

// Most elements one tensor the rules describe may have: 2^48 (the largest real tensor,
// DeepSeek-V3's stacked experts, has about 2^32); its bytes then fit in 64 bits for any dtype.
constexpr std::int64_t kMaxRuleTensorElements = std::int64_t{1} << 48;
// Most iterations all of a description's for loops may run together, and the largest first
// index: 4 x kMaxModelTensors (a loop may skip layers, e.g. dense ones, making no tensor).
constexpr std::int64_t kMaxLoopIterations = 4 * kMaxModelTensors;

class Describer {
 public:
  Describer(const RulesFile& f, const ModelConfig& c) : f_(f), c_(c) {
    auto& m = config_;
    m["model_type"] = RuleValue::String(c.model_type);
    m["architecture"] = RuleValue::String(c.architecture);
    m["hidden_size"] = RuleValue::Int(c.hidden_size);
    m["num_hidden_layers"] = RuleValue::Int(c.num_hidden_layers);
    // 0: absent from the config (ModelConfig): null, so a rule that uses one fails naming it.
    auto size = [](const char* key, std::int64_t v) { return v > 0 ? RuleValue::Int(v) : RuleValue::Null(key); };
    m["num_attention_heads"] = size("num_attention_heads", c.num_attention_heads);
    m["num_key_value_heads"] = size("num_key_value_heads", c.num_key_value_heads);
    m["head_dim"] = size("head_dim", c.head_dim);
    m["intermediate_size"] = size("intermediate_size", c.intermediate_size);
    m["vocab_size"] = RuleValue::Int(c.vocab_size);
    m["tie_word_embeddings"] = RuleValue::Bool(c.tie_word_embeddings);
    m["attention_bias"] = RuleValue::Bool(c.attention_bias);
    m["mlp_bias"] = RuleValue::Bool(c.mlp_bias);
    for (const char* k : {"num_experts", "num_local_experts", "n_routed_experts"}) m[k] = OptInt(c.num_experts);
    m["num_experts_per_tok"] = OptInt(c.num_experts_per_tok);
    m["moe_intermediate_size"] = OptInt(c.moe_intermediate_size);
    m["n_shared_experts"] = OptInt(c.n_shared_experts);
    m["first_k_dense_replace"] = OptInt(c.first_k_dense_replace);
    m["q_lora_rank"] = OptInt(c.q_lora_rank);
    m["kv_lora_rank"] = OptInt(c.kv_lora_rank);
    m["qk_nope_head_dim"] = OptInt(c.qk_nope_head_dim);
    m["qk_rope_head_dim"] = OptInt(c.qk_rope_head_dim);
    m["v_head_dim"] = OptInt(c.v_head_dim);
    m["moe_layer_freq"] = OptInt(c.moe_layer_freq);
    m["decoder_sparse_step"] = OptInt(c.decoder_sparse_step);
    m["mlp_only_layers"] = RuleValue::List(c.mlp_only_layers);
    m["num_nextn_predict_layers"] = OptInt(c.num_nextn_predict_layers);
    m["fp8"] = RuleValue::Bool(c.fp8_block_size.has_value());
    for (const auto& [k, text] : c.extra) {
      if (m.find(k) == m.end()) m[k] = ExtraValue(text);
    }
    for (auto& [k, v] : m) {
      if (v.is_null()) v.origin = k;
    }
    for (const auto& [k, e] : f.lets) is_let_.insert(k);
    lookup_ = [this](std::string_view name) { return Lookup(name); };
  }

  Result<ModelDescription> Run() {
    for (const Expression& e : f_.requires_) {
      SW_ASSIGN_OR_RETURN(bool ok, e.EvaluateBool(lookup_));
      if (!ok) {
        return InvalidArgument(
            fmt::format("{}: model config {}: requirement \"{}\" does not hold", e.where(), c_.model_type, e.text()));
      }
    }
    SW_RETURN_IF_ERROR(Execute(f_.tensors));
    SW_RETURN_IF_ERROR(Finish());
    return ModelDescription{c_, std::move(tensors_), std::move(fused_), std::move(rule_names_)};
  }

 private:
  // A bound variable or config value, without copying; nullptr for lets and unknowns.
  const RuleValue* Find(std::string_view name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      if (it->first == name) return &it->second;
    }
    if (is_let_.count(name) > 0) return nullptr;
    const auto it = config_.find(name);
    return it == config_.end() ? nullptr : &it->second;
  }

  Result<RuleValue> Lookup(std::string_view name) {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      if (it->first == name) return it->second;
    }
    for (const auto& [k, e] : f_.lets) {
      if (k != name) continue;
      if (++let_depth_ > 64) {
        --let_depth_;
        return InvalidArgument(fmt::format("{}: let \"{}\" refers to itself", e.where(), k));
      }
      Result<RuleValue> v = e.Evaluate(lookup_);
      --let_depth_;
      if (v.ok() && v->is_null() && v->origin.empty()) v->origin = k;
      return v;
    }
    const auto it = config_.find(name);
    if (it != config_.end()) return it->second;
    // A key the config does not have is null: `has(k)` and `k ?? default` test for it,
    // and using it otherwise is a "<k> is missing" error naming the rule.
    return RuleValue::Null(std::string(name));
  }

  Result<std::string> Expand(const std::string& pattern, const std::string& where) {
    std::string out;
    out.reserve(pattern.size() + 8);
    std::size_t i = 0;
    while (i < pattern.size()) {
      const std::size_t open = pattern.find('{', i);
      if (open == std::string::npos) {
        out.append(pattern, i, std::string::npos);
        break;
      }
      out.append(pattern, i, open - i);
      const std::size_t close = pattern.find('}', open);
      const std::string_view id = std::string_view(pattern).substr(open + 1, close - open - 1);
      if (const RuleValue* fast = Find(id); fast != nullptr && fast->kind == RuleValue::Kind::kString) {
        out += fast->s;
        i = close + 1;
        continue;
      } else if (fast != nullptr && fast->kind == RuleValue::Kind::kInt) {
        out += std::to_string(fast->i);
        i = close + 1;
        continue;
      }
      Result<RuleValue> v = Lookup(id);
      if (!v.ok() && v.status().code() == ErrorCode::kNotFound) {
        return InvalidArgument(fmt::format("{}: pattern \"{}\": unknown placeholder {{{}}}", where, pattern, id));
      }
      SW_RETURN_IF_ERROR(v.status());
      if (v->kind == RuleValue::Kind::kInt) {
        out += std::to_string(v->i);
      } else if (v->kind == RuleValue::Kind::kString) {
        out += v->s;
      } else {
        return InvalidArgument(
            fmt::format("{}: pattern \"{}\": {{{}}} is not an integer or string", where, pattern, id));
      }
      i = close + 1;
    }
    return out;
  }

  int BoundInt(std::string_view var) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      if (it->first == var && it->second.kind == RuleValue::Kind::kInt) return static_cast<int>(it->second.i);
    }
    return -1;
  }

  Status Emit(std::string name, DType dtype, std::vector<std::int64_t> shape, ParallelRole role, bool quantizable,
              std::optional<DType> engine_dtype, const Rule& rule) {
    if (current_rule_ptr_ != &rule) {
      const auto [rit, fresh] = rule_index_.emplace(&rule, static_cast<int>(rule_names_.size()));
      if (fresh) rule_names_.push_back(rule.where);
      current_rule_ = rit->second;
      current_rule_ptr_ = &rule;
    }
    if (tensors_.size() >= static_cast<std::size_t>(kMaxModelTensors)) {
      return InvalidArgument(fmt::format("{}: model config {}: the rules make more than {} tensors (at \"{}\")",
                                         rule.where, c_.model_type, kMaxModelTensors, name));
    }
    if (shape.size() > kMaxTensorDims) {
      return InvalidArgument(fmt::format("{}: model config {}: tensor {} has {} dimensions (at most {})", rule.where,
                                         c_.model_type, name, shape.size(), kMaxTensorDims));
    }
    std::int64_t numel = 1;
    for (std::int64_t d : shape) {
      if (__builtin_mul_overflow(numel, d, &numel) || numel > kMaxRuleTensorElements) {
        return InvalidArgument(fmt::format("{}: model config {}: tensor {} of shape [{}] has more than 2^48 elements",
                                           rule.where, c_.model_type, name, fmt::join(shape, ", ")));
      }
    }
    if (role == ParallelRole::kRow && shape.size() < 2) {
      return InvalidArgument(fmt::format(
          "{}: model config {}: tensor {} of shape [{}] has role row, which splits its input dimension (dim 1, the "
          "last of stacked experts): a 1-D tensor has none (a row-parallel layer's bias is replicated)",
          rule.where, c_.model_type, name, fmt::join(shape, ", ")));
    }
    if (quantizable && (shape.size() < 2 || shape.size() > 3)) {
      return InvalidArgument(fmt::format(
          "{}: model config {}: tensor {} {}[{}] is marked quantized, but FP8 block quantisation takes a 2-D [out, "
          "in] or 3-D [experts, out, in] tensor (DeepGEMM's 128x128 blocks); mark it quantized: false",
          rule.where, c_.model_type, name, DTypeName(dtype), fmt::join(shape, ", ")));
    }
    ModelTensor t{TensorSpec{std::move(name), dtype, std::move(shape)}, role, BoundInt("layer"), BoundInt("expert"),
                  shared_};
    t.quantizable = quantizable;
    t.engine_dtype = engine_dtype;
    t.rule = current_rule_;
    tensors_.push_back(std::move(t));
    return Status::Ok();
  }

  // After every rule ran: each name produced once; fused parts exist; fused entries in order.
  Status Finish() {
    // Duplicates: names sorted in one contiguous vector (no per-name allocation).
    std::vector<std::pair<std::string_view, int>> names;
    names.reserve(tensors_.size());
    for (std::size_t i = 0; i < tensors_.size(); ++i) names.emplace_back(tensors_[i].spec.name, static_cast<int>(i));
    std::sort(names.begin(), names.end());
    for (std::size_t i = 1; i < names.size(); ++i) {
      if (names[i].first != names[i - 1].first) continue;
      const auto& first = tensors_[static_cast<std::size_t>(names[i - 1].second)];
      const auto& second = tensors_[static_cast<std::size_t>(names[i].second)];
      return InvalidArgument(
          fmt::format("{}: tensor {} is produced twice (also by the rule at {}): two roles for "
                      "one tensor",
                      rule_names_[static_cast<std::size_t>(second.rule)], second.spec.name,
                      rule_names_[static_cast<std::size_t>(first.rule)]));
    }
    struct Produced {
      const std::vector<std::pair<std::string_view, int>>& names;
      std::size_t count(const std::string& key) const {
        return std::binary_search(names.begin(), names.end(), std::pair<std::string_view, int>(key, -1),
                                  [](const auto& a, const auto& b) { return a.first < b.first; })
                   ? 1
                   : 0;
      }
    } produced{names};
    std::string key;
    fused_.reserve(pending_.size() * 2);
    for (PendingFuse& f : pending_) {
      auto has = [&](const std::string& part, std::string_view suffix) {
        key.assign(part).append(suffix);
        return produced.count(key) > 0;
      };
      bool scaled = true;
      const ModelTensor* first = nullptr;  // the first part's weight: every other must fit beside it
      for (const auto& p : f.parts) {
        if (!has(p, ".weight")) {
          return InvalidArgument(fmt::format("{}: fused parameter {} names part {} but no rule produced {}.weight",
                                             f.where, f.name, p, p));
        }
        const ModelTensor& part = tensors_[static_cast<std::size_t>(
            std::lower_bound(names.begin(), names.end(), std::pair<std::string_view, int>(key, -1))->second)];
        if (first == nullptr) {
          first = &part;
        } else if (part.spec.dtype != first->spec.dtype || part.role != first->role ||
                   part.spec.shape.size() != first->spec.shape.size() ||
                   !std::equal(part.spec.shape.begin() + 1, part.spec.shape.end(), first->spec.shape.begin() + 1)) {
          return InvalidArgument(fmt::format(
              "{}: fused parameter {}: part {} is {}[{}] ({}) but part {} is {}[{}] ({}): the parts are concatenated "
              "along dim 0 into one parameter (vLLM's QKVParallelLinear, MergedColumnParallelLinear), so they need "
              "the same dtype, role and every dimension after the first",
              f.where, f.name, part.spec.name, DTypeName(part.spec.dtype), fmt::join(part.spec.shape, ", "),
              ParallelRoleName(part.role), first->spec.name, DTypeName(first->spec.dtype),
              fmt::join(first->spec.shape, ", "), ParallelRoleName(first->role)));
        }
        scaled = scaled && has(p, kScaleSuffix);
        if (f.bias && !has(p, ".bias")) {
          return InvalidArgument(
              fmt::format("{}: fused parameter {} has bias but no rule produced {}.bias", f.where, f.name, p));
        }
      }
      auto add = [&](std::string_view suffix, bool last) {
        FusedParameter fp{last ? std::move(f.name) : f.name, {}};
        fp.name += suffix;
        fp.parts.reserve(f.parts.size());
        for (auto& p : f.parts) {
          fp.parts.push_back(last ? std::move(p) : p);
          fp.parts.back() += suffix;
        }
        fused_.push_back(std::move(fp));
      };
      add(".weight", !scaled && !f.bias);
      if (scaled) add(kScaleSuffix, !f.bias);
      if (f.bias) add(".bias", true);
    }
    return Status::Ok();
  }

  Result<std::int64_t> Size(const Expression& e, std::string_view what, const std::string& name) {
    SW_ASSIGN_OR_RETURN(std::int64_t v, e.EvaluateInt(lookup_));
    if (v <= 0) {
      return InvalidArgument(fmt::format("{}: model config {}: {} of {} is \"{}\" = {}, must be positive", e.where(),
                                         c_.model_type, what, name, e.text(), v));
    }
    return v;
  }

  Result<bool> Flag(const Expression& e, bool default_value) {
    if (e.empty()) return default_value;
    return e.EvaluateBool(lookup_);
  }

  Status Execute(const std::vector<Rule>& rules) {
    for (const Rule& r : rules) {
      if (!r.when.empty()) {
        SW_ASSIGN_OR_RETURN(bool on, r.when.EvaluateBool(lookup_));
        if (!on) continue;
      }
      SW_RETURN_IF_ERROR(ExecuteOne(r));
    }
    return Status::Ok();
  }

  Status ExecuteOne(const Rule& r) {
    using K = Rule::Kind;
    switch (r.kind) {
      case K::kTensor: {
        SW_ASSIGN_OR_RETURN(std::string name, Expand(r.pattern, r.where));
        std::vector<std::int64_t> shape;
        for (std::size_t d = 0; d < r.shape.size(); ++d) {
          SW_ASSIGN_OR_RETURN(std::int64_t v, Size(r.shape[d], fmt::format("dim {}", d), name));
          shape.push_back(v);
        }
        SW_ASSIGN_OR_RETURN(bool q, Flag(r.quantized, false));
        return Emit(std::move(name), r.dtype.value_or(c_.dtype()), std::move(shape), r.role, q, r.engine_dtype, r);
      }
      case K::kLinear: {
        SW_ASSIGN_OR_RETURN(std::string prefix, Expand(r.pattern, r.where));
        SW_ASSIGN_OR_RETURN(std::int64_t out, Size(r.out, "out", prefix));
        SW_ASSIGN_OR_RETURN(std::int64_t in, Size(r.in, "in", prefix));
        SW_ASSIGN_OR_RETURN(bool bias, Flag(r.bias, false));
        SW_ASSIGN_OR_RETURN(bool q, Flag(r.quantized, true));
        std::string weight = prefix + ".weight";
        if (q && c_.fp8_block_size.has_value()) {
          const auto& block = *c_.fp8_block_size;
          SW_RETURN_IF_ERROR(Emit(weight, DType::kF8E4M3, {out, in}, r.role, true, r.engine_dtype, r));
          SW_RETURN_IF_ERROR(Emit(weight + "_scale_inv", DType::kF32, {CeilDiv(out, block[0]), CeilDiv(in, block[1])},
                                  r.role, false, DType::kF32, r));
          tensors_.back().scale_of = std::move(weight);
        } else {
          SW_RETURN_IF_ERROR(Emit(std::move(weight), c_.dtype(), {out, in}, r.role, q, r.engine_dtype, r));
        }
        if (bias) {
          const ParallelRole br =
              r.bias_role.value_or(r.role == ParallelRole::kColumn ? ParallelRole::kColumn : ParallelRole::kReplicated);
          SW_RETURN_IF_ERROR(Emit(prefix + ".bias", c_.dtype(), {out}, br, false, r.engine_dtype, r));
        }
        return Status::Ok();
      }
      case K::kFuse: {
        PendingFuse f;
        f.where = r.where;
        SW_ASSIGN_OR_RETURN(f.name, Expand(r.pattern, r.where));
        for (const auto& p : r.parts) {
          SW_ASSIGN_OR_RETURN(std::string part, Expand(p, r.where));
          f.parts.push_back(std::move(part));
        }
        SW_ASSIGN_OR_RETURN(f.bias, Flag(r.bias, false));
        pending_.push_back(std::move(f));
        return Status::Ok();
      }
      case K::kFor: {
        std::int64_t from = 0;
        if (!r.from.empty()) {
          SW_ASSIGN_OR_RETURN(from, r.from.EvaluateInt(lookup_));
        }
        SW_ASSIGN_OR_RETURN(std::int64_t count, r.count.EvaluateInt(lookup_));
        if (count < 0 || from < 0) {
          return InvalidArgument(fmt::format("{}: model config {}: for {}: from {} count {} must not be negative",
                                             r.where, c_.model_type, r.pattern, from, count));
        }
        // Bounded so the loop variable fits a layer or expert index and the work stays bounded
        // (a loop whose body makes no tensor is not stopped by the tensor limit).
        if (from > kMaxLoopIterations || count > kMaxLoopIterations - loop_iterations_) {
          return InvalidArgument(fmt::format(
              "{}: model config {}: for {}: from {} count {}: the rules' loops would run more than {} iterations "
              "(or start past it)",
              r.where, c_.model_type, r.pattern, from, count, kMaxLoopIterations));
        }
        loop_iterations_ += count;
        const bool saved = shared_;
        shared_ = shared_ || r.shared_expert;
        frames_.emplace_back(r.pattern, RuleValue::Int(from));
        Status s = Status::Ok();
        for (std::int64_t i = from; i < from + count && s.ok(); ++i) {
          frames_.back().second.i = i;
          s = Execute(r.body);
        }
        frames_.pop_back();
        shared_ = saved;
        return s;
      }
      case K::kIf: {
        SW_ASSIGN_OR_RETURN(bool c, r.cond.EvaluateBool(lookup_));
        return Execute(c ? r.body : r.else_body);
      }
      case K::kUse: {
        const Block& block = f_.blocks.at(r.pattern);
        std::vector<std::pair<std::string, RuleValue>> bound;
        for (const auto& [k, e] : r.with) {
          SW_ASSIGN_OR_RETURN(RuleValue v, e.Evaluate(lookup_));
          if (v.is_null() && v.origin.empty()) v.origin = k;
          bound.emplace_back(k, std::move(v));
        }
        if (!r.prefix.empty()) {
          SW_ASSIGN_OR_RETURN(std::string p, Expand(r.prefix, r.where));
          bound.emplace_back("prefix", RuleValue::String(std::move(p)));
        }
        const std::size_t depth = frames_.size();
        for (auto& b : bound) frames_.push_back(std::move(b));
        const bool saved = shared_;
        shared_ = shared_ || r.shared_expert;
        Status s = Execute(block.body);
        shared_ = saved;
        frames_.resize(depth);
        return s;
      }
    }
    return Internal("bad rule kind");
  }

  const RulesFile& f_;
  const ModelConfig& c_;
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, RuleValue, Hash, std::equal_to<>> config_;
  std::unordered_set<std::string, Hash, std::equal_to<>> is_let_;
  std::vector<std::string> rule_names_;
  std::unordered_map<const Rule*, int> rule_index_;
  const Rule* current_rule_ptr_ = nullptr;
  struct PendingFuse {
    std::string where, name;
    std::vector<std::string> parts;
    bool bias = false;
  };
  std::vector<PendingFuse> pending_;
  int current_rule_ = -1;
  std::vector<std::pair<std::string, RuleValue>> frames_;
  RuleLookup lookup_;
  int let_depth_ = 0;
  bool shared_ = false;
  std::vector<ModelTensor> tensors_;
  std::int64_t loop_iterations_ = 0;  // every for loop's count so far (kMaxLoopIterations)
  std::vector<FusedParameter> fused_;
};

}  // namespace

Result<ModelDescription> DescribeWithRules(const RulesFile& file, const ModelConfig& config) {
  return Describer(file, config).Run();
}

}  // namespace shardwire::model
