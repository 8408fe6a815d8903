// ModelRules (public API over rules_loader / rules_describer), the built-in rules
// registry (files embedded at build time, see builtin_rules.h) and the user registry.
#include "shardwire/model_rules.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "core/regular_file.h"
#include "model/atomic_file.h"
#include "model/builtin_rules.h"
#include "model/rules_file.h"

namespace shardwire {

Result<ModelRules> ModelRules::Parse(std::string_view yaml_text, std::string_view file_name) {
  SW_ASSIGN_OR_RETURN(model::RulesFile f, model::LoadRulesFile(yaml_text, file_name));
  ModelRules r;
  r.file_ = std::make_shared<const model::RulesFile>(std::move(f));
  return r;
}

Result<ModelRules> ModelRules::Load(const std::string& path) {
  std::string text;
  SW_RETURN_IF_ERROR(ReadRegularFile(path, &text));
  return Parse(text, path);
}

const std::string& ModelRules::family() const { return file_->family; }
const std::vector<std::string>& ModelRules::model_types() const { return file_->model_types; }
const std::string& ModelRules::file_name() const { return file_->file_name; }
const std::string& ModelRules::text() const { return file_->text; }

Result<ModelDescription> ModelRules::Describe(const ModelConfig& config) const {
  if (!config.quant_method.empty() && (config.quant_method != "fp8" || !config.fp8_block_size.has_value())) {
    return Unsupported(
        fmt::format("model config {}: quantization_config quant_method \"{}\"{} is not supported; "
                    "supported: FP8 with weight_block_size (DeepSeek-V3 style)",
                    config.model_type, config.quant_method,
                    config.quant_method == "fp8" ? " without weight_block_size (per-tensor scales)" : ""));
  }
  return model::DescribeWithRules(*file_, config);
}

namespace {

struct Builtins {
  std::vector<ModelRules> files;
  std::map<std::string, const ModelRules*, std::less<>> by_type;
  Status status = Status::Ok();
};

const Builtins& GetBuiltins() {
  static const Builtins* builtins = [] {
    auto* b = new Builtins;
    for (const auto& [name, text] : BuiltinModelRulesFiles()) {
      Result<ModelRules> r = ModelRules::Parse(text, "models/rules/" + name);
      if (!r.ok()) {
        b->status = Internal(fmt::format("built-in rules file does not parse: {}", r.status().message()));
        continue;
      }
      b->files.push_back(std::move(*r));
    }
    for (const ModelRules& r : b->files) {
      for (const auto& t : r.model_types()) b->by_type[t] = &r;
    }
    return b;
  }();
  return *builtins;
}

struct UserRegistry {
  std::mutex mu;
  std::map<std::string, ModelRules, std::less<>> by_type;
};

UserRegistry& Users() {
  static UserRegistry* r = new UserRegistry;
  return *r;
}

}  // namespace

const std::vector<std::pair<std::string, std::string>>& BuiltinModelRulesFiles() {
  static const auto* files = new std::vector<std::pair<std::string, std::string>>(model::EmbeddedRulesFiles());
  return *files;
}

const ModelRules* FindBuiltinModelRules(std::string_view model_type) {
  const Builtins& b = GetBuiltins();
  const auto it = b.by_type.find(model_type);
  return it == b.by_type.end() ? nullptr : it->second;
}

std::vector<std::string> BuiltinModelTypes() {
  std::vector<std::string> out;
  for (const auto& [t, r] : GetBuiltins().by_type) out.push_back(t);
  return out;
}

void AddUserModelRules(ModelRules rules) {
  UserRegistry& u = Users();
  std::lock_guard<std::mutex> lock(u.mu);
  for (const auto& t : rules.model_types()) u.by_type.insert_or_assign(t, rules);
}

Status LoadUserModelRules(const std::string& path) {
  SW_ASSIGN_OR_RETURN(ModelRules r, ModelRules::Load(path));
  UserRegistry& u = Users();
  std::lock_guard<std::mutex> lock(u.mu);
  for (const auto& t : r.model_types()) {
    // Two files for one model_type (two --model-rules): which one describes it would depend on
    // their order on the command line. Loading the same file again is fine.
    if (auto it = u.by_type.find(t); it != u.by_type.end() && it->second.file_name() != r.file_name()) {
      return InvalidArgument(
          fmt::format("{}: model_type \"{}\" is described by {} already; give one rules file per "
                      "model_type",
                      r.file_name(), t, it->second.file_name()));
    }
  }
  for (const auto& t : r.model_types()) u.by_type.insert_or_assign(t, r);
  return Status::Ok();
}

void ClearUserModelRules() {
  UserRegistry& u = Users();
  std::lock_guard<std::mutex> lock(u.mu);
  u.by_type.clear();
}

Result<std::optional<ModelRules>> FindModelRules(std::string_view model_type) {
  {
    UserRegistry& u = Users();
    std::lock_guard<std::mutex> lock(u.mu);
    const auto it = u.by_type.find(model_type);
    if (it != u.by_type.end()) return std::optional<ModelRules>(it->second);
  }
  SW_RETURN_IF_ERROR(GetBuiltins().status);
  const ModelRules* r = FindBuiltinModelRules(model_type);
  if (r == nullptr) return std::optional<ModelRules>();
  return std::optional<ModelRules>(*r);
}

Status CheckRulesCoverCheckpoint(const ModelDescription& description, const std::vector<TensorSpec>& checkpoint_tensors,
                                 std::string_view checkpoint_name) {
  std::unordered_set<std::string> in_checkpoint;
  for (const auto& t : checkpoint_tensors) in_checkpoint.insert(t.name);
  // rule -> (first tensor it produced, whether any is in the checkpoint), in rule order.
  std::vector<std::string> order;
  std::unordered_map<std::string, std::pair<std::string, bool>> rules;
  std::unordered_set<std::string> described;
  for (const auto& t : description.tensors) {
    described.insert(t.spec.name);
    if (t.rule < 0 || static_cast<std::size_t>(t.rule) >= description.rules.size()) continue;
    const std::string& rule = description.rules[static_cast<std::size_t>(t.rule)];
    auto [it, inserted] = rules.try_emplace(rule, t.spec.name, false);
    if (inserted) order.push_back(rule);
    it->second.second = it->second.second || in_checkpoint.count(t.spec.name) > 0;
  }
  for (const auto& rule : order) {
    const auto& [first, matched] = rules.at(rule);
    if (!matched) {
      return LayoutMismatch(fmt::format("{}: the rule at {} (first tensor {}) matches nothing in the checkpoint",
                                        checkpoint_name, rule, first));
    }
  }
  std::vector<std::string> unplaced;
  for (const auto& t : checkpoint_tensors) {
    const std::string_view n = t.name;
    if (n.size() >= 19 && n.substr(n.size() - 19) == "rotary_emb.inv_freq") continue;
    if (described.count(t.name) == 0 && !IsTiedEmbeddingCopy(description, t)) unplaced.push_back(t.name);
  }
  if (!unplaced.empty()) {
    std::sort(unplaced.begin(), unplaced.end());
    const std::size_t shown = std::min<std::size_t>(unplaced.size(), 8);
    return LayoutMismatch(fmt::format("{}: {} checkpoint tensor(s) no rule places: {}{}", checkpoint_name,
                                      unplaced.size(),
                                      fmt::join(unplaced.begin(), unplaced.begin() + static_cast<long>(shown), ", "),
                                      unplaced.size() > shown ? ", ..." : ""));
  }
  return Status::Ok();
}

}  // namespace shardwire
