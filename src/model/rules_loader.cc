// Loads a model rules file (YAML, docs/model_rules.md) into a RulesFile with yaml-cpp,
// checking every key, role, dtype, expression and name pattern; each error names
// "<file>:<line>" from the node's mark.
#include <algorithm>
#include <cctype>
#include <map>
#include <set>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "model/rules_file.h"

namespace shardwire::model {
namespace {

class Loader {
 public:
  explicit Loader(std::string_view file) : file_(file) {}

  std::string Where(const YAML::Node& n) const { return fmt::format("{}:{}", file_, n.Mark().line + 1); }
  /// Most rule lists (tensors, do, then, else) nested in one another.
  static constexpr int kMaxRuleListDepth = 64;
  mutable int list_depth_ = 0;  // RuleList's current nesting
  /// Most rules one file may load, counting each rule of an aliased list once per use: aliases
  /// nested in one another (`b1: {do: &l1 [{if: "0", then: *l0, else: *l0}]}`, ...) double the
  /// rules at each level, 2^40 rules from 3 KB (a YAML "billion laughs"). The built-in files
  /// load a few hundred.
  static constexpr std::size_t kMaxLoadedRules = 100'000;
  mutable std::size_t rules_loaded_ = 0;
  Status Error(const YAML::Node& n, std::string_view what) const {
    return InvalidArgument(fmt::format("{}: {}", Where(n), what));
  }

  Status CheckKeys(const YAML::Node& map, std::string_view what, std::initializer_list<std::string_view> known) const {
    std::set<std::string> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const std::string key = it->first.as<std::string>();
      // YAML 1.2 requires unique keys; yaml-cpp keeps both and `map[key]` returns the first.
      if (!seen.insert(key).second) return Error(it->first, fmt::format("key \"{}\" given twice in {}", key, what));
      bool ok = false;
      for (auto k : known) ok = ok || k == key;
      if (!ok) {
        std::string list;
        for (auto k : known) list += (list.empty() ? "" : ", ") + std::string(k);
        return Error(it->first, fmt::format("unknown key \"{}\" in {} (known: {})", key, what, list));
      }
    }
    return Status::Ok();
  }

  Result<std::string> Scalar(const YAML::Node& n, std::string_view key) const {
    if (!n.IsScalar()) return Error(n, fmt::format("\"{}\" must be a scalar", key));
    return n.Scalar();
  }

  Result<Expression> Expr(const YAML::Node& map, std::string_view key, bool required) const {
    const YAML::Node n = map[std::string(key)];
    if (!n) {
      if (required) return Error(map, fmt::format("missing key \"{}\"", key));
      return Expression();
    }
    SW_ASSIGN_OR_RETURN(std::string text, Scalar(n, key));
    return Expression::Parse(text, Where(n));
  }

  Result<ParallelRole> Role(const YAML::Node& n) const {
    SW_ASSIGN_OR_RETURN(std::string r, Scalar(n, "role"));
    if (r == "column") return ParallelRole::kColumn;
    if (r == "row") return ParallelRole::kRow;
    if (r == "vocab") return ParallelRole::kVocab;
    if (r == "replicated") return ParallelRole::kReplicated;
    return Error(n, fmt::format("unknown role \"{}\" (known: column, row, vocab, replicated)", r));
  }

  Result<std::optional<DType>> DTypeKey(const YAML::Node& map, std::string_view key) const {
    const YAML::Node n = map[std::string(key)];
    if (!n) return std::optional<DType>();
    SW_ASSIGN_OR_RETURN(std::string d, Scalar(n, key));
    std::string upper;
    for (char c : d) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (upper == "MODEL") return std::optional<DType>();
    Result<DType> parsed = ParseDType(upper);
    if (parsed.ok()) return std::optional<DType>(*parsed);
    return Error(n, fmt::format("unknown dtype \"{}\" for \"{}\" (known: model or a safetensors dtype: f32, bf16, "
                                "f16, f64, f8_e4m3, ...)",
                                d, key));
  }

  Result<std::string> Pattern(const YAML::Node& n, std::string_view key) const {
    SW_ASSIGN_OR_RETURN(std::string p, Scalar(n, key));
    // A name must not be empty; a use rule's prefix may (no prefix).
    if (p.empty() && key != "prefix") return Error(n, fmt::format("an empty name pattern for \"{}\"", key));
    SW_RETURN_IF_ERROR(CheckPattern(p, Where(n)));
    return p;
  }

  Result<std::vector<Rule>> RuleList(const YAML::Node& list, std::string_view key) const {
    if (!list.IsSequence()) return Error(list, fmt::format("\"{}\" must be a list of rules", key));
    // A YAML alias can make a list contain itself (`tensors: &t [{for: ..., do: *t}]`): the node
    // graph is then a cycle that no parser depth limit sees.
    if (list_depth_ >= kMaxRuleListDepth) {
      return Error(list, fmt::format("rule lists nest more than {} deep (a YAML alias that refers to itself?)",
                                     kMaxRuleListDepth));
    }
    ++list_depth_;
    struct Leave {
      int& depth;
      ~Leave() { --depth; }
    } leave{list_depth_};
    std::vector<Rule> out;
    for (const YAML::Node& n : list) {
      SW_ASSIGN_OR_RETURN(Rule r, OneRule(n));
      out.push_back(std::move(r));
    }
    return out;
  }

  Result<Rule> OneRule(const YAML::Node& n) const {
    if (!n.IsMap()) return Error(n, "a rule must be a map with one of tensor, linear, fuse, for, if, use");
    if (++rules_loaded_ > kMaxLoadedRules) {
      return Error(
          n, fmt::format("the file loads more than {} rules (YAML aliases used inside each other?)", kMaxLoadedRules));
    }
    Rule r;
    r.where = Where(n);
    int kinds = 0;
    for (auto k : {"tensor", "linear", "fuse", "for", "if", "use"}) kinds += n[k] ? 1 : 0;
    if (kinds != 1) return Error(n, "a rule needs exactly one of tensor, linear, fuse, for, if, use");
    SW_ASSIGN_OR_RETURN(r.when, Expr(n, "when", false));
    if (n["tensor"]) {
      r.kind = Rule::Kind::kTensor;
      SW_RETURN_IF_ERROR(
          CheckKeys(n, "a tensor rule", {"tensor", "shape", "role", "dtype", "engine_dtype", "quantized", "when"}));
      SW_ASSIGN_OR_RETURN(r.pattern, Pattern(n["tensor"], "tensor"));
      const YAML::Node shape = n["shape"];
      if (!shape || !shape.IsSequence() || shape.size() == 0)
        return Error(shape ? shape : n, "\"shape\" must be a non-empty list of expressions");
      for (const YAML::Node& d : shape) {
        SW_ASSIGN_OR_RETURN(std::string text, Scalar(d, "shape"));
        SW_ASSIGN_OR_RETURN(Expression e, Expression::Parse(text, Where(d)));
        r.shape.push_back(std::move(e));
      }
      if (!n["role"]) return Error(n, "missing key \"role\"");
      SW_ASSIGN_OR_RETURN(r.role, Role(n["role"]));
      SW_ASSIGN_OR_RETURN(r.dtype, DTypeKey(n, "dtype"));
      SW_ASSIGN_OR_RETURN(r.engine_dtype, DTypeKey(n, "engine_dtype"));
      SW_ASSIGN_OR_RETURN(r.quantized, Expr(n, "quantized", false));
    } else if (n["linear"]) {
      r.kind = Rule::Kind::kLinear;
      SW_RETURN_IF_ERROR(
          CheckKeys(n, "a linear rule",
                    {"linear", "out", "in", "role", "bias", "bias_role", "engine_dtype", "quantized", "when"}));
      SW_ASSIGN_OR_RETURN(r.pattern, Pattern(n["linear"], "linear"));
      SW_ASSIGN_OR_RETURN(r.out, Expr(n, "out", true));
      SW_ASSIGN_OR_RETURN(r.in, Expr(n, "in", true));
      if (!n["role"]) return Error(n, "missing key \"role\"");
      SW_ASSIGN_OR_RETURN(r.role, Role(n["role"]));
      SW_ASSIGN_OR_RETURN(r.bias, Expr(n, "bias", false));
      if (n["bias_role"]) {
        SW_ASSIGN_OR_RETURN(ParallelRole br, Role(n["bias_role"]));
        r.bias_role = br;
      }
      SW_ASSIGN_OR_RETURN(r.engine_dtype, DTypeKey(n, "engine_dtype"));
      SW_ASSIGN_OR_RETURN(r.quantized, Expr(n, "quantized", false));
    } else if (n["fuse"]) {
      r.kind = Rule::Kind::kFuse;
      SW_RETURN_IF_ERROR(CheckKeys(n, "a fuse rule", {"fuse", "parts", "bias", "when"}));
      SW_ASSIGN_OR_RETURN(r.pattern, Pattern(n["fuse"], "fuse"));
      const YAML::Node parts = n["parts"];
      if (!parts || !parts.IsSequence() || parts.size() < 2)
        return Error(parts ? parts : n, "\"parts\" must list at least two module names");
      for (const YAML::Node& p : parts) {
        SW_ASSIGN_OR_RETURN(std::string s, Pattern(p, "parts"));
        r.parts.push_back(std::move(s));
      }
      SW_ASSIGN_OR_RETURN(r.bias, Expr(n, "bias", false));
    } else if (n["for"]) {
      r.kind = Rule::Kind::kFor;
      SW_RETURN_IF_ERROR(CheckKeys(n, "a for rule", {"for", "from", "count", "do", "when", "shared_expert"}));
      SW_ASSIGN_OR_RETURN(r.pattern, Scalar(n["for"], "for"));
      SW_RETURN_IF_ERROR(CheckPattern("{" + r.pattern + "}", r.where));
      SW_ASSIGN_OR_RETURN(r.from, Expr(n, "from", false));
      SW_ASSIGN_OR_RETURN(r.count, Expr(n, "count", true));
      if (!n["do"]) return Error(n, "missing key \"do\"");
      SW_ASSIGN_OR_RETURN(r.body, RuleList(n["do"], "do"));
      SW_ASSIGN_OR_RETURN(r.shared_expert, Bool(n, "shared_expert"));
    } else if (n["if"]) {
      r.kind = Rule::Kind::kIf;
      SW_RETURN_IF_ERROR(CheckKeys(n, "an if rule", {"if", "then", "else"}));
      SW_ASSIGN_OR_RETURN(r.cond, Expr(n, "if", true));
      if (!n["then"]) return Error(n, "missing key \"then\"");
      SW_ASSIGN_OR_RETURN(r.body, RuleList(n["then"], "then"));
      if (n["else"]) {
        SW_ASSIGN_OR_RETURN(r.else_body, RuleList(n["else"], "else"));
      }
    } else {
      r.kind = Rule::Kind::kUse;
      SW_RETURN_IF_ERROR(CheckKeys(n, "a use rule", {"use", "prefix", "with", "when", "shared_expert"}));
      SW_ASSIGN_OR_RETURN(r.pattern, Scalar(n["use"], "use"));
      if (n["prefix"]) {
        SW_ASSIGN_OR_RETURN(r.prefix, Pattern(n["prefix"], "prefix"));
      }
      const YAML::Node with = n["with"];
      if (with) {
        if (!with.IsMap()) return Error(with, "\"with\" must map parameter names to expressions");
        for (auto it = with.begin(); it != with.end(); ++it) {
          SW_ASSIGN_OR_RETURN(std::string text, Scalar(it->second, "with"));
          SW_ASSIGN_OR_RETURN(Expression e, Expression::Parse(text, Where(it->second)));
          r.with.emplace_back(it->first.as<std::string>(), std::move(e));
        }
      }
      SW_ASSIGN_OR_RETURN(r.shared_expert, Bool(n, "shared_expert"));
    }
    return r;
  }

  Result<bool> Bool(const YAML::Node& map, std::string_view key) const {
    const YAML::Node n = map[std::string(key)];
    if (!n) return false;
    SW_ASSIGN_OR_RETURN(std::string s, Scalar(n, key));
    if (s == "true") return true;
    if (s == "false") return false;
    return Error(n, fmt::format("\"{}\" must be true or false", key));
  }

  // Every `use` names a defined block with exactly its parameters.
  Status CheckUses(const std::vector<Rule>& rules, const RulesFile& f) const {
    for (const Rule& r : rules) {
      if (r.kind == Rule::Kind::kUse) {
        const auto it = f.blocks.find(r.pattern);
        if (it == f.blocks.end()) {
          return InvalidArgument(fmt::format("{}: use of undefined block \"{}\"", r.where, r.pattern));
        }
        std::set<std::string> want(it->second.params.begin(), it->second.params.end()), got;
        for (const auto& [k, e] : r.with) got.insert(k);
        if (want != got) {
          return InvalidArgument(fmt::format("{}: block \"{}\" takes parameters [{}], the use gives [{}]", r.where,
                                             r.pattern, fmt::join(want, ", "), fmt::join(got, ", ")));
        }
      }
      SW_RETURN_IF_ERROR(CheckUses(r.body, f));
      SW_RETURN_IF_ERROR(CheckUses(r.else_body, f));
    }
    return Status::Ok();
  }

  Result<RulesFile> Load(const YAML::Node& root) const {
    if (!root.IsMap()) return Error(root, "a rules file must be a YAML map (family, model_types, tensors, ...)");
    SW_RETURN_IF_ERROR(
        CheckKeys(root, "a rules file", {"family", "model_types", "source", "let", "require", "blocks", "tensors"}));
    RulesFile f;
    f.file_name = file_;
    if (!root["family"]) return Error(root, "missing key \"family\"");
    SW_ASSIGN_OR_RETURN(f.family, Scalar(root["family"], "family"));
    const YAML::Node types = root["model_types"];
    if (!types || !types.IsSequence() || types.size() == 0)
      return Error(types ? types : root, "\"model_types\" must be a non-empty list");
    for (const YAML::Node& t : types) {
      SW_ASSIGN_OR_RETURN(std::string s, Scalar(t, "model_types"));
      f.model_types.push_back(std::move(s));
    }
    if (root["source"]) {
      SW_ASSIGN_OR_RETURN(f.source, Scalar(root["source"], "source"));
    }
    if (const YAML::Node lets = root["let"]) {
      if (!lets.IsMap()) return Error(lets, "\"let\" must map names to expressions");
      for (auto it = lets.begin(); it != lets.end(); ++it) {
        const std::string name = it->first.as<std::string>();
        if (std::any_of(f.lets.begin(), f.lets.end(), [&](const auto& l) { return l.first == name; }))
          return Error(it->first, fmt::format("let \"{}\" given twice", name));
        SW_ASSIGN_OR_RETURN(std::string text, Scalar(it->second, "let"));
        SW_ASSIGN_OR_RETURN(Expression e, Expression::Parse(text, Where(it->second)));
        f.lets.emplace_back(it->first.as<std::string>(), std::move(e));
      }
    }
    if (const YAML::Node req = root["require"]) {
      if (!req.IsSequence()) return Error(req, "\"require\" must be a list of boolean expressions");
      for (const YAML::Node& e : req) {
        SW_ASSIGN_OR_RETURN(std::string text, Scalar(e, "require"));
        SW_ASSIGN_OR_RETURN(Expression x, Expression::Parse(text, Where(e)));
        f.requires_.push_back(std::move(x));
      }
    }
    if (const YAML::Node blocks = root["blocks"]) {
      if (!blocks.IsMap()) return Error(blocks, "\"blocks\" must map block names to {params, do}");
      for (auto it = blocks.begin(); it != blocks.end(); ++it) {
        // A copy (a Node is a handle): it->second lives in a proxy that dies with this statement.
        const YAML::Node b = it->second;
        if (!b.IsMap()) return Error(b, "a block must be a map with \"do\" (and \"params\")");
        SW_RETURN_IF_ERROR(CheckKeys(b, "a block", {"params", "do"}));
        Block block;
        block.where = Where(b);
        if (const YAML::Node params = b["params"]) {
          if (!params.IsSequence()) return Error(params, "\"params\" must be a list of names");
          for (const YAML::Node& p : params) {
            SW_ASSIGN_OR_RETURN(std::string s, Scalar(p, "params"));
            block.params.push_back(std::move(s));
          }
        }
        if (!b["do"]) return Error(b, "missing key \"do\"");
        SW_ASSIGN_OR_RETURN(block.body, RuleList(b["do"], "do"));
        if (!f.blocks.emplace(it->first.as<std::string>(), std::move(block)).second)
          return Error(it->first, fmt::format("block \"{}\" given twice", it->first.as<std::string>()));
      }
    }
    if (!root["tensors"]) return Error(root, "missing key \"tensors\"");
    SW_ASSIGN_OR_RETURN(f.tensors, RuleList(root["tensors"], "tensors"));
    if (f.tensors.empty()) return Error(root["tensors"], "\"tensors\" is empty: the rules would describe no tensor");
    SW_RETURN_IF_ERROR(CheckUses(f.tensors, f));
    for (const auto& [name, b] : f.blocks) SW_RETURN_IF_ERROR(CheckUses(b.body, f));
    SW_RETURN_IF_ERROR(CheckNoCycle(f));
    return f;
  }

  // The blocks `rules` use directly (through nested bodies, not through other blocks).
  static void UsedBlocks(const std::vector<Rule>& rules, std::vector<std::string>* out) {
    for (const Rule& r : rules) {
      if (r.kind == Rule::Kind::kUse) out->push_back(r.pattern);
      UsedBlocks(r.body, out);
      UsedBlocks(r.else_body, out);
    }
  }

  // No block uses itself, directly or through others (describing it would recurse for ever).
  // Depth-first over the use graph with an explicit stack; the error names the cycle.
  Status CheckNoCycle(const RulesFile& f) const {
    std::map<std::string, std::vector<std::string>> uses;
    for (const auto& [name, b] : f.blocks) UsedBlocks(b.body, &uses[name]);
    enum class Mark { kNew, kOnPath, kDone };
    std::map<std::string, Mark> mark;
    for (const auto& [root, unused] : uses) {
      if (mark[root] != Mark::kNew) continue;
      std::vector<std::pair<std::string, std::size_t>> path{{root, 0}};  // block, next use to visit
      mark[root] = Mark::kOnPath;
      while (!path.empty()) {
        auto& [block, next] = path.back();
        const std::vector<std::string>& used = uses[block];
        if (next == used.size()) {
          mark[block] = Mark::kDone;
          path.pop_back();
          continue;
        }
        const std::string callee = used[next++];
        if (mark[callee] == Mark::kOnPath) {
          std::vector<std::string> cycle;
          auto from = std::find_if(path.begin(), path.end(), [&](const auto& p) { return p.first == callee; });
          for (auto it = from; it != path.end(); ++it) cycle.push_back(it->first);
          cycle.push_back(callee);
          return InvalidArgument(
              fmt::format("{}: block \"{}\" uses itself ({})", file_, callee, fmt::join(cycle, " -> ")));
        }
        if (mark[callee] == Mark::kNew) {
          mark[callee] = Mark::kOnPath;
          path.emplace_back(callee, 0);
        }
      }
    }
    return Status::Ok();
  }

 private:
  std::string file_;
};

}  // namespace

Status CheckPattern(std::string_view pattern, std::string_view where) {
  std::size_t i = 0;
  while (i < pattern.size()) {
    if (pattern[i] == '}') return InvalidArgument(fmt::format("{}: pattern \"{}\": '}}' without '{{'", where, pattern));
    if (pattern[i] != '{') {
      ++i;
      continue;
    }
    const std::size_t close = pattern.find('}', i);
    if (close == std::string_view::npos) {
      return InvalidArgument(fmt::format("{}: pattern \"{}\": '{{' without '}}'", where, pattern));
    }
    const std::string_view id = pattern.substr(i + 1, close - i - 1);
    bool ok = !id.empty() && !std::isdigit(static_cast<unsigned char>(id[0]));
    for (char c : id) ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
    if (!ok) {
      return InvalidArgument(
          fmt::format("{}: pattern \"{}\": \"{{{}}}\" is not a placeholder (an identifier)", where, pattern, id));
    }
    i = close + 1;
  }
  return Status::Ok();
}

Result<RulesFile> LoadRulesFile(std::string_view yaml_text, std::string_view file_name) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    return InvalidArgument(
        fmt::format("{}:{}:{}: YAML syntax error: {}", file_name, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  try {
    Loader loader(file_name);
    SW_ASSIGN_OR_RETURN(RulesFile f, loader.Load(root));
    f.text = std::string(yaml_text);
    return f;
  } catch (const YAML::Exception& e) {
    return InvalidArgument(fmt::format("{}:{}: {}", file_name, e.mark.line + 1, e.msg));
  }
}

}  // namespace shardwire::model
