// The expression language of model rules files: a tokenizer, a precedence-climbing parser
// and a tree evaluator. Precedence, loosest first: ?: , ||, &&, == !=, < <= > >=,
// + -, * / %, ??, unary ! -.
#include "model/rules_expression.h"

#include <algorithm>
#include <cctype>
#include <limits>

#include <fmt/format.h>

namespace shardwire::model {

struct ExpressionNode {
  enum class Op { kLiteral, kIdent, kUnary, kBinary, kTernary, kCall };
  Op op = Op::kLiteral;
  RuleValue literal;
  std::string name;  // identifier, operator or function name
  std::vector<std::shared_ptr<const ExpressionNode>> args;
  int height = 1;  // levels of the tree below and including this node
};

namespace {

using NodePtr = std::shared_ptr<const ExpressionNode>;

// Parsing, evaluating and destroying an expression recurse once per level of its tree (and
// parsing once per open parenthesis or prefix operator): deeper ones are refused, so that a rules
// file of 200,000 '(' or a sum of a million terms is an error, not a stack overflow. The rules
// Shardwire ships nest a few levels.
constexpr int kMaxExpressionDepth = 256;

struct Token {
  enum class Kind { kEnd, kInt, kIdent, kOp };
  Kind kind = Kind::kEnd;
  std::string text;
  std::int64_t value = 0;
};

class Parser {
 public:
  Parser(std::string_view text, std::string_view where) : text_(text), where_(where) {}

  Result<NodePtr> ParseAll() {
    SW_RETURN_IF_ERROR(Next());
    SW_ASSIGN_OR_RETURN(NodePtr n, ParseTernary());
    if (tok_.kind != Token::Kind::kEnd) return Error(fmt::format("unexpected \"{}\"", tok_.text));
    return n;
  }

 private:
  Status Error(std::string_view what) const {
    return InvalidArgument(fmt::format("{}: expression \"{}\": {}", where_, text_, what));
  }

  Status Next() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
    tok_ = Token{};
    if (pos_ >= text_.size()) return Status::Ok();
    const char c = text_[pos_];
    if (std::isdigit(static_cast<unsigned char>(c))) {
      std::int64_t v = 0;
      const std::size_t start = pos_;
      while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
        const int d = text_[pos_] - '0';
        if (v > (std::numeric_limits<std::int64_t>::max() - d) / 10) return Error("integer too large");
        v = v * 10 + d;
        ++pos_;
      }
      tok_ = {Token::Kind::kInt, std::string(text_.substr(start, pos_ - start)), v};
      return Status::Ok();
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      const std::size_t start = pos_;
      while (pos_ < text_.size() && (std::isalnum(static_cast<unsigned char>(text_[pos_])) || text_[pos_] == '_')) {
        ++pos_;
      }
      tok_ = {Token::Kind::kIdent, std::string(text_.substr(start, pos_ - start)), 0};
      return Status::Ok();
    }
    static constexpr std::string_view kTwo[] = {"==", "!=", "<=", ">=", "&&", "||", "??"};
    for (auto op : kTwo) {
      if (text_.substr(pos_, 2) == op) {
        tok_ = {Token::Kind::kOp, std::string(op), 0};
        pos_ += 2;
        return Status::Ok();
      }
    }
    if (std::string_view("+-*/%<>!()?:,").find(c) != std::string_view::npos) {
      tok_ = {Token::Kind::kOp, std::string(1, c), 0};
      ++pos_;
      return Status::Ok();
    }
    return Error(fmt::format("unexpected character '{}'", c));
  }

  bool IsOp(std::string_view op) const { return tok_.kind == Token::Kind::kOp && tok_.text == op; }

  static NodePtr Make(ExpressionNode::Op op, std::string name, std::vector<NodePtr> args) {
    auto n = std::make_shared<ExpressionNode>();
    n->op = op;
    n->name = std::move(name);
    n->args = std::move(args);
    for (const NodePtr& a : n->args) n->height = std::max(n->height, a->height + 1);
    return n;
  }

  // Counts the parser's nesting while a recursive step runs (kMaxExpressionDepth).
  struct Nesting {
    explicit Nesting(int& depth) : depth_(depth) { ++depth_; }
    ~Nesting() { --depth_; }
    Nesting(const Nesting&) = delete;
    Nesting& operator=(const Nesting&) = delete;
    int& depth_;
  };
  Status TooDeep() const { return Error(fmt::format("nested deeper than {} levels", kMaxExpressionDepth)); }

  Result<NodePtr> ParseTernary() {
    const Nesting nesting(depth_);
    if (depth_ > kMaxExpressionDepth) return TooDeep();
    SW_ASSIGN_OR_RETURN(NodePtr cond, ParseBinary(0));
    if (!IsOp("?")) return cond;
    SW_RETURN_IF_ERROR(Next());
    SW_ASSIGN_OR_RETURN(NodePtr a, ParseTernary());
    if (!IsOp(":")) return Error("expected ':' in 'c ? a : b'");
    SW_RETURN_IF_ERROR(Next());
    SW_ASSIGN_OR_RETURN(NodePtr b, ParseTernary());
    return Make(ExpressionNode::Op::kTernary, "?", {cond, a, b});
  }

  static int Precedence(std::string_view op) {
    if (op == "||") return 2;
    if (op == "&&") return 3;
    if (op == "==" || op == "!=") return 4;
    if (op == "<" || op == "<=" || op == ">" || op == ">=") return 5;
    if (op == "+" || op == "-") return 6;
    if (op == "*" || op == "/" || op == "%") return 7;
    if (op == "??") return 8;  // binds tightest: `q_lora_rank ?? 0 > 0` is `(q_lora_rank ?? 0) > 0`
    return -1;
  }

  Result<NodePtr> ParseBinary(int min_prec) {
    SW_ASSIGN_OR_RETURN(NodePtr lhs, ParseUnary());
    while (tok_.kind == Token::Kind::kOp) {
      const int prec = Precedence(tok_.text);
      if (prec < 0 || prec < min_prec) break;
      const std::string op = tok_.text;
      SW_RETURN_IF_ERROR(Next());
      SW_ASSIGN_OR_RETURN(NodePtr rhs, ParseBinary(prec + 1));
      lhs = Make(ExpressionNode::Op::kBinary, op, {lhs, rhs});
      if (lhs->height > kMaxExpressionDepth) return TooDeep();  // a long chain: a left-deep tree
    }
    return lhs;
  }

  Result<NodePtr> ParseUnary() {
    const Nesting nesting(depth_);
    if (depth_ > kMaxExpressionDepth) return TooDeep();
    if (IsOp("!") || IsOp("-")) {
      const std::string op = tok_.text;
      SW_RETURN_IF_ERROR(Next());
      SW_ASSIGN_OR_RETURN(NodePtr a, ParseUnary());
      return Make(ExpressionNode::Op::kUnary, op, {a});
    }
    return ParsePrimary();
  }

  Result<NodePtr> ParsePrimary() {
    if (tok_.kind == Token::Kind::kInt) {
      auto n = std::make_shared<ExpressionNode>();
      n->literal = RuleValue::Int(tok_.value);
      SW_RETURN_IF_ERROR(Next());
      return NodePtr(n);
    }
    if (IsOp("(")) {
      SW_RETURN_IF_ERROR(Next());
      SW_ASSIGN_OR_RETURN(NodePtr n, ParseTernary());
      if (!IsOp(")")) return Error("expected ')'");
      SW_RETURN_IF_ERROR(Next());
      return n;
    }
    if (tok_.kind != Token::Kind::kIdent) {
      return Error(tok_.kind == Token::Kind::kEnd ? "unexpected end" : fmt::format("unexpected \"{}\"", tok_.text));
    }
    const std::string name = tok_.text;
    SW_RETURN_IF_ERROR(Next());
    if (name == "true" || name == "false" || name == "null") {
      auto n = std::make_shared<ExpressionNode>();
      n->literal = name == "null" ? RuleValue::Null("null") : RuleValue::Bool(name == "true");
      return NodePtr(n);
    }
    if (!IsOp("(")) return Make(ExpressionNode::Op::kIdent, name, {});
    if (name != "has" && name != "contains") {
      return Error(fmt::format("unknown function \"{}\" (known: has, contains)", name));
    }
    SW_RETURN_IF_ERROR(Next());
    std::vector<NodePtr> args;
    while (!IsOp(")")) {
      SW_ASSIGN_OR_RETURN(NodePtr a, ParseTernary());
      args.push_back(a);
      if (IsOp(",")) {
        SW_RETURN_IF_ERROR(Next());
      } else if (!IsOp(")")) {
        return Error("expected ',' or ')'");
      }
    }
    SW_RETURN_IF_ERROR(Next());
    const std::size_t want = name == "has" ? 1 : 2;
    if (args.size() != want) return Error(fmt::format("{}() takes {} argument(s)", name, want));
    if (name == "has" && args[0]->op != ExpressionNode::Op::kIdent) return Error("has() takes an identifier");
    return Make(ExpressionNode::Op::kCall, name, std::move(args));
  }

  std::string_view text_;
  std::string_view where_;
  std::size_t pos_ = 0;
  Token tok_;
  int depth_ = 0;  // ParseTernary / ParseUnary calls in progress
};

std::string_view KindName(RuleValue::Kind k) {
  switch (k) {
    case RuleValue::Kind::kNull:
      return "null";
    case RuleValue::Kind::kInt:
      return "an integer";
    case RuleValue::Kind::kBool:
      return "a boolean";
    case RuleValue::Kind::kList:
      return "a list";
    case RuleValue::Kind::kString:
      return "a string";
  }
  return "?";
}

class Evaluator {
 public:
  Evaluator(const RuleLookup& lookup, const std::string& text, const std::string& where)
      : lookup_(lookup), text_(text), where_(where) {}

  Status Error(std::string_view what) const {
    return InvalidArgument(fmt::format("{}: expression \"{}\": {}", where_, text_, what));
  }

  Result<RuleValue> Eval(const ExpressionNode& n) const {
    using Op = ExpressionNode::Op;
    switch (n.op) {
      case Op::kLiteral:
        return n.literal;
      case Op::kIdent: {
        Result<RuleValue> v = lookup_(n.name);
        if (!v.ok() && v.status().code() == ErrorCode::kNotFound) {
          return Error(fmt::format("unknown identifier \"{}\"", n.name));
        }
        if (v.ok() && v->is_null() && v->origin.empty()) v->origin = n.name;
        return v;
      }
      case Op::kUnary: {
        SW_ASSIGN_OR_RETURN(RuleValue a, Eval(*n.args[0]));
        if (n.name == "!") {
          SW_ASSIGN_OR_RETURN(bool b, AsBool(a, "!"));
          return RuleValue::Bool(!b);
        }
        SW_ASSIGN_OR_RETURN(std::int64_t i, AsInt(a, "-"));
        std::int64_t negated = 0;
        if (__builtin_sub_overflow(std::int64_t{0}, i, &negated)) return Error("integer overflow");
        return RuleValue::Int(negated);
      }
      case Op::kTernary: {
        SW_ASSIGN_OR_RETURN(RuleValue c, Eval(*n.args[0]));
        SW_ASSIGN_OR_RETURN(bool b, AsBool(c, "?:"));
        return Eval(*n.args[b ? 1 : 2]);
      }
      case Op::kCall: {
        if (n.name == "has") {
          SW_ASSIGN_OR_RETURN(RuleValue a, Eval(*n.args[0]));
          return RuleValue::Bool(!a.is_null());
        }
        SW_ASSIGN_OR_RETURN(RuleValue list, Eval(*n.args[0]));
        SW_ASSIGN_OR_RETURN(RuleValue x, Eval(*n.args[1]));
        if (list.kind != RuleValue::Kind::kList) {
          return Error(fmt::format("contains() needs a list, got {}", KindName(list.kind)));
        }
        SW_ASSIGN_OR_RETURN(std::int64_t i, AsInt(x, "contains"));
        for (auto e : list.list) {
          if (e == i) return RuleValue::Bool(true);
        }
        return RuleValue::Bool(false);
      }
      case Op::kBinary:
        return Binary(n);
    }
    return Error("bad node");
  }

 private:
  Result<std::int64_t> AsInt(const RuleValue& v, std::string_view op) const {
    if (v.kind == RuleValue::Kind::kInt) return v.i;
    if (v.is_null()) return Missing(v);
    return Error(fmt::format("operator {} needs an integer, got {}", op, KindName(v.kind)));
  }
  Result<bool> AsBool(const RuleValue& v, std::string_view op) const {
    if (v.kind == RuleValue::Kind::kBool) return v.b;
    if (v.is_null()) return Missing(v);
    return Error(fmt::format("operator {} needs a boolean, got {}", op, KindName(v.kind)));
  }
  Status Missing(const RuleValue& v) const {
    return Error(
        fmt::format("{} is missing (null or absent in the model config)", v.origin.empty() ? "a value" : v.origin));
  }

  Result<RuleValue> Binary(const ExpressionNode& n) const {
    const std::string& op = n.name;
    SW_ASSIGN_OR_RETURN(RuleValue a, Eval(*n.args[0]));
    if (op == "??") {
      if (!a.is_null()) return a;
      return Eval(*n.args[1]);
    }
    if (op == "&&" || op == "||") {
      SW_ASSIGN_OR_RETURN(bool x, AsBool(a, op));
      if (op == "&&" && !x) return RuleValue::Bool(false);
      if (op == "||" && x) return RuleValue::Bool(true);
      SW_ASSIGN_OR_RETURN(RuleValue b, Eval(*n.args[1]));
      SW_ASSIGN_OR_RETURN(bool y, AsBool(b, op));
      return RuleValue::Bool(y);
    }
    SW_ASSIGN_OR_RETURN(RuleValue b, Eval(*n.args[1]));
    if (op == "==" || op == "!=") {
      bool eq = false;
      if (a.is_null() || b.is_null()) {
        eq = a.is_null() && b.is_null();
      } else if (a.kind != b.kind) {
        return Error(fmt::format("cannot compare {} with {}", KindName(a.kind), KindName(b.kind)));
      } else {
        eq = a.i == b.i && a.b == b.b && a.list == b.list && a.s == b.s;
      }
      return RuleValue::Bool(op == "==" ? eq : !eq);
    }
    SW_ASSIGN_OR_RETURN(std::int64_t x, AsInt(a, op));
    SW_ASSIGN_OR_RETURN(std::int64_t y, AsInt(b, op));
    if (op == "<") return RuleValue::Bool(x < y);
    if (op == "<=") return RuleValue::Bool(x <= y);
    if (op == ">") return RuleValue::Bool(x > y);
    if (op == ">=") return RuleValue::Bool(x >= y);
    std::int64_t r = 0;
    if (op == "+") {
      if (__builtin_add_overflow(x, y, &r)) return Error("integer overflow");
    } else if (op == "-") {
      if (__builtin_sub_overflow(x, y, &r)) return Error("integer overflow");
    } else if (op == "*") {
      if (__builtin_mul_overflow(x, y, &r)) return Error("integer overflow");
    } else {
      if (y == 0) return Error(fmt::format("{} by zero", op == "/" ? "division" : "modulo"));
      // INT64_MIN / -1 does not fit (and traps, SIGFPE, as does INT64_MIN % -1).
      if (x == std::numeric_limits<std::int64_t>::min() && y == -1) {
        if (op == "/") return Error("integer overflow");
        r = 0;
      } else {
        r = op == "/" ? x / y : x % y;
      }
    }
    return RuleValue::Int(r);
  }

  const RuleLookup& lookup_;
  const std::string& text_;
  const std::string& where_;
};

void CollectIdentifiers(const ExpressionNode& n, std::vector<std::string>* out) {
  if (n.op == ExpressionNode::Op::kIdent) out->push_back(n.name);
  for (const auto& a : n.args) CollectIdentifiers(*a, out);
}

}  // namespace

Result<Expression> Expression::Parse(std::string_view text, std::string_view where) {
  Parser p(text, where);
  SW_ASSIGN_OR_RETURN(NodePtr root, p.ParseAll());
  Expression e;
  e.root_ = std::move(root);
  e.text_ = std::string(text);
  e.where_ = std::string(where);
  return e;
}

Result<RuleValue> Expression::Evaluate(const RuleLookup& lookup) const {
  if (root_ == nullptr) return InvalidArgument(fmt::format("{}: empty expression", where_));
  return Evaluator(lookup, text_, where_).Eval(*root_);
}

Result<std::int64_t> Expression::EvaluateInt(const RuleLookup& lookup) const {
  SW_ASSIGN_OR_RETURN(RuleValue v, Evaluate(lookup));
  if (v.kind == RuleValue::Kind::kInt) return v.i;
  if (v.is_null()) {
    return InvalidArgument(fmt::format("{}: expression \"{}\": {} is missing (null or absent in the model config)",
                                       where_, text_, v.origin.empty() ? "the value" : v.origin));
  }
  return InvalidArgument(
      fmt::format("{}: expression \"{}\" is {}, expected an integer", where_, text_, KindName(v.kind)));
}

Result<bool> Expression::EvaluateBool(const RuleLookup& lookup) const {
  SW_ASSIGN_OR_RETURN(RuleValue v, Evaluate(lookup));
  if (v.kind == RuleValue::Kind::kBool) return v.b;
  if (v.is_null()) {
    return InvalidArgument(fmt::format("{}: expression \"{}\": {} is missing (null or absent in the model config)",
                                       where_, text_, v.origin.empty() ? "the value" : v.origin));
  }
  return InvalidArgument(
      fmt::format("{}: expression \"{}\" is {}, expected a boolean", where_, text_, KindName(v.kind)));
}

std::vector<std::string> Expression::Identifiers() const {
  std::vector<std::string> out;
  if (root_ != nullptr) CollectIdentifiers(*root_, &out);
  return out;
}

}  // namespace shardwire::model
