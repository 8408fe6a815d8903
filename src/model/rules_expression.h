// Internal: the small expression language of model rules files (docs/model_rules.md).
//
// Integer arithmetic (+ - * / %), comparisons (== != < <= > >=), logic (&& || !), the
// conditional `c ? a : b`, null-coalescing `a ?? b`, the literals true / false / null and
// decimal integers, identifiers (config keys, loop variables, `let` names, block
// parameters) and two functions: has(x) (x is not null) and contains(list, x).
// Arithmetic or comparison on null is an error naming the identifier that was null
// ("<key> is missing"); nothing is defaulted silently.
//
// Thread-safety: an Expression is immutable after parsing; Evaluate is const and reentrant.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/status.h"

namespace shardwire::model {

/// A value: null, an integer, a boolean, a list of integers or a string.
struct RuleValue {
  enum class Kind { kNull, kInt, kBool, kList, kString };
  Kind kind = Kind::kNull;
  std::int64_t i = 0;
  bool b = false;
  std::vector<std::int64_t> list;
  std::string s;
  /// For a null: the identifier it came from (for "<key> is missing" messages).
  std::string origin;

  static RuleValue Null(std::string origin = "") { return {Kind::kNull, 0, false, {}, {}, std::move(origin)}; }
  static RuleValue Int(std::int64_t v) { return {Kind::kInt, v, false, {}, {}, {}}; }
  static RuleValue Bool(bool v) { return {Kind::kBool, 0, v, {}, {}, {}}; }
  static RuleValue List(std::vector<std::int64_t> v) { return {Kind::kList, 0, false, std::move(v), {}, {}}; }
  static RuleValue String(std::string v) { return {Kind::kString, 0, false, {}, std::move(v), {}}; }
  bool is_null() const { return kind == Kind::kNull; }
};

/// Looks an identifier up. kNotFound when it names nothing (the evaluator turns that into
/// an "unknown identifier" error); other errors pass through.
using RuleLookup = std::function<Result<RuleValue>(std::string_view name)>;

struct ExpressionNode;

/// A parsed expression.
class Expression {
 public:
  Expression() = default;
  /// Parses `text`. kInvalidArgument "<where>: expression \"<text>\": <what>" on a syntax error.
  static Result<Expression> Parse(std::string_view text, std::string_view where);

  /// Evaluates with `lookup`. kInvalidArgument naming `where` and the offending
  /// identifier for an unknown identifier, a null in arithmetic ("<key> is missing"), a
  /// type mismatch or a division by zero.
  Result<RuleValue> Evaluate(const RuleLookup& lookup) const;
  /// Evaluate and require an integer / a boolean.
  Result<std::int64_t> EvaluateInt(const RuleLookup& lookup) const;
  Result<bool> EvaluateBool(const RuleLookup& lookup) const;

  /// Identifiers the expression names (for checking them when a file is loaded).
  std::vector<std::string> Identifiers() const;

  const std::string& text() const { return text_; }
  const std::string& where() const { return where_; }
  bool empty() const { return root_ == nullptr; }

 private:
  std::shared_ptr<const ExpressionNode> root_;
  std::string text_;
  std::string where_;
};

}  // namespace shardwire::model
