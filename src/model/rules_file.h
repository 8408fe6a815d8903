// Internal: the parsed form of a model rules file (docs/model_rules.md) and the two
// operations on it: loading YAML into it (rules_loader.cc) and applying it to a config
// (rules_describer.cc).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/rules_expression.h"
#include "shardwire/dtype.h"
#include "shardwire/model_description.h"

namespace shardwire::model {

/// One entry of a `tensors:` / `do:` / `then:` / `else:` list.
struct Rule {
  enum class Kind { kTensor, kLinear, kFuse, kFor, kIf, kUse };
  Kind kind = Kind::kTensor;
  std::string where;    ///< "<file>:<line>"
  std::string pattern;  ///< tensor name / linear prefix / fused name / loop variable / block name
  Expression when;      ///< empty: always
  // tensor
  std::vector<Expression> shape;
  std::optional<DType> dtype;  ///< checkpoint dtype; unset: the model's dtype
  // tensor and linear
  ParallelRole role = ParallelRole::kReplicated;
  std::optional<DType> engine_dtype;
  Expression quantized;  ///< empty: false for tensor, true for linear
  // linear
  Expression out, in, bias;
  std::optional<ParallelRole> bias_role;
  // fuse
  std::vector<std::string> parts;
  // for
  Expression from, count;
  // if
  Expression cond;
  // for / if / use bodies
  std::vector<Rule> body, else_body;
  // use
  std::string prefix;
  std::vector<std::pair<std::string, Expression>> with;
  bool shared_expert = false;
};

struct Block {
  std::string where;
  std::vector<std::string> params;
  std::vector<Rule> body;
};

struct RulesFile {
  std::string file_name;
  std::string text;
  std::string family;
  std::vector<std::string> model_types;
  std::string source;
  std::vector<std::pair<std::string, Expression>> lets;
  std::vector<Expression> requires_;
  std::map<std::string, Block> blocks;
  std::vector<Rule> tensors;
};

/// YAML text -> RulesFile (errors: kInvalidArgument "<file>:<line>: ...").
Result<RulesFile> LoadRulesFile(std::string_view yaml_text, std::string_view file_name);

/// Applies `file` to `config`.
Result<ModelDescription> DescribeWithRules(const RulesFile& file, const ModelConfig& config);

/// Checks a `{name}` pattern: braces balanced, each holding an identifier.
Status CheckPattern(std::string_view pattern, std::string_view where);

}  // namespace shardwire::model
