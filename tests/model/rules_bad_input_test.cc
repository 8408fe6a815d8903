// Bad rules files are typed errors naming file and line before anything is described or
// moved; user rules registered with AddUserModelRules win over the built-in ones.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "model/test_util.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"
#include "shardwire/model_rules.h"

namespace shardwire {
namespace {

ModelConfig Tiny() {
  ModelConfig c;
  c.model_type = "toy";
  c.hidden_size = 8;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.intermediate_size = 16;
  c.vocab_size = 10;
  return c;
}

constexpr const char* kGood = R"(family: toy
model_types: [toy]
tensors:
  - tensor: model.embed_tokens.weight
    shape: [vocab_size, hidden_size]
    role: vocab
  - for: layer
    count: num_hidden_layers
    do:
      - linear: model.layers.{layer}.mlp.up_proj
        out: intermediate_size
        in: hidden_size
        role: column
)";

TEST(ModelRulesBadInput, GoodFileDescribes) {
  auto r = ModelRules::Parse(kGood, "toy.yaml");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto d = r->Describe(Tiny());
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  ASSERT_EQ(d->tensors.size(), 3u);
  EXPECT_EQ(d->tensors[2].spec.name, "model.layers.1.mlp.up_proj.weight");
  EXPECT_EQ(d->tensors[2].spec.shape, (std::vector<std::int64_t>{16, 8}));
  EXPECT_EQ(d->tensors[2].layer, 1);
  EXPECT_TRUE(d->tensors[2].quantizable);
  EXPECT_FALSE(d->tensors[0].quantizable);
  EXPECT_EQ(d->rules[static_cast<std::size_t>(d->tensors[2].rule)], "toy.yaml:10");
}

TEST(ModelRulesBadInput, SyntaxErrorNamesFileAndLine) {
  auto r = ModelRules::Parse("family: toy\nmodel_types: [toy\ntensors: []\n", "broken.yaml");
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(r.status(), "broken.yaml:");
  EXPECT_MESSAGE_HAS(r.status(), "YAML syntax error");
}

TEST(ModelRulesBadInput, UnknownKeyNamesFileAndLine) {
  std::string text = kGood;
  text.replace(text.find("    shape: [vocab_size"), 10, "    shap:");
  auto r = ModelRules::Parse(text, "typo.yaml");
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(r.status(), "typo.yaml:5: unknown key \"shap\"");

  r = ModelRules::Parse(std::string(kGood) + "colour: blue\n", "top.yaml");
  EXPECT_MESSAGE_HAS(r.status(), "top.yaml:14: unknown key \"colour\"");
  std::string role = kGood;
  role.replace(role.find("role: vocab"), 11, "role: vocabulary");
  r = ModelRules::Parse(role, "role.yaml");
  EXPECT_MESSAGE_HAS(r.status(), "role.yaml:6: unknown role \"vocabulary\"");
}

// YAML 1.2 wants unique keys; yaml-cpp keeps both and a lookup returned the first, so a file
// with `family:` twice (or a rule with `shape:` twice) loaded with the other value ignored.
// An empty name and an empty tensor list described nothing, silently.
TEST(ModelRulesBadInput, DuplicateKeysEmptyNamesAndNoTensorsAreRefused) {
  auto twice = ModelRules::Parse(std::string(kGood) + "family: toy2\n", "twice.yaml");
  EXPECT_EQ(twice.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(twice.status(), "twice.yaml:14: key \"family\" given twice in a rules file");
  std::string shape = kGood;
  shape.replace(shape.find("    role: vocab"), 14, "    shape: [1]\n    role: vocab");
  EXPECT_MESSAGE_HAS(ModelRules::Parse(shape, "shape.yaml").status(), "key \"shape\" given twice in a tensor rule");
  std::string empty_name = kGood;
  empty_name.replace(empty_name.find("tensor: model.embed_tokens.weight"), 33, "tensor: \"\"");
  EXPECT_MESSAGE_HAS(ModelRules::Parse(empty_name, "empty.yaml").status(),
                     "empty.yaml:4: an empty name pattern for \"tensor\"");
  auto none = ModelRules::Parse("family: toy\nmodel_types: [toy]\ntensors: []\n", "none.yaml");
  EXPECT_EQ(none.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(none.status(), "none.yaml:3: \"tensors\" is empty");
  auto lets = ModelRules::Parse(std::string(kGood) + "let:\n  a: 1\n  a: 2\n", "lets.yaml");
  EXPECT_MESSAGE_HAS(lets.status(), "let \"a\" given twice");
}

TEST(ModelRulesBadInput, WrongShapeExpression) {
  std::string text = kGood;
  text.replace(text.find("[vocab_size, hidden_size]"), 25, "[vocab_size, hidden_size *]");
  auto r = ModelRules::Parse(text, "shape.yaml");
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(r.status(), "shape.yaml:5: expression \"hidden_size *\"");

  // A key the config does not have: named, with the rule's line, when describing.
  text = kGood;
  text.replace(text.find("out: intermediate_size"), 22, "out: intermediate_sise");
  r = ModelRules::Parse(text, "ident.yaml");
  ASSERT_TRUE(r.ok());
  auto d = r->Describe(Tiny());
  EXPECT_EQ(d.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(d.status(), "ident.yaml:11");
  EXPECT_MESSAGE_HAS(d.status(), "intermediate_sise is missing");

  // A size that is not positive.
  text = kGood;
  text.replace(text.find("out: intermediate_size"), 22, "out: hidden_size - 8");
  d = ModelRules::Parse(text, "zero.yaml")->Describe(Tiny());
  EXPECT_EQ(d.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(d.status(), "must be positive");
}

TEST(ModelRulesBadInput, TwoRolesForOneTensor) {
  const std::string text = std::string(kGood) + R"(  - tensor: model.layers.0.mlp.up_proj.weight
    shape: [intermediate_size, hidden_size]
    role: row
)";
  auto r = ModelRules::Parse(text, "twice.yaml");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto d = r->Describe(Tiny());
  EXPECT_EQ(d.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(d.status(), "twice.yaml:14");
  EXPECT_MESSAGE_HAS(d.status(), "twice.yaml:10");
  EXPECT_MESSAGE_HAS(d.status(), "model.layers.0.mlp.up_proj.weight is produced twice");
}

// Rules that cannot be right were accepted: a fuse of parts that do not concatenate along dim 0
// (up [16, 8] with down [8, 16]; a 1-D norm with a 2-D weight), role row on a 1-D tensor (no
// input dimension to split), quantized on a 1-D tensor (convert then failed without naming the
// rule). Each is a typed error naming the file and line.
TEST(ModelRulesBadInput, RulesThatCannotBeRightAreRefusedNamingTheRule) {
  const std::string base = std::string(kGood) + R"(      - linear: model.layers.{layer}.mlp.down_proj
        out: hidden_size
        in: intermediate_size
        role: row
      - tensor: model.layers.{layer}.norm.weight
        shape: [hidden_size]
        role: replicated
)";
  const struct {
    const char* what;
    std::string extra;
    std::vector<std::string> says;
  } cases[] = {
      {"fuse of [16, 8] and [8, 16]",
       "      - fuse: model.layers.{layer}.mlp.up_down\n"
       "        parts: [\"model.layers.{layer}.mlp.up_proj\", \"model.layers.{layer}.mlp.down_proj\"]\n",
       {"bad.yaml:21", "fused parameter model.layers.0.mlp.up_down", "F32[8, 16] (row)", "every dimension after"}},
      {"fuse of a norm and a weight",
       "      - fuse: model.layers.{layer}.mixed\n"
       "        parts: [\"model.layers.{layer}.norm\", \"model.layers.{layer}.mlp.up_proj\"]\n",
       {"bad.yaml:21", "fused parameter model.layers.0.mixed"}},
      {"row on 1-D",
       "      - tensor: model.layers.{layer}.gain.weight\n        shape: [hidden_size]\n        role: row\n",
       {"bad.yaml:21", "model.layers.0.gain.weight of shape [8] has role row"}},
      {"quantized 1-D",
       "      - tensor: model.layers.{layer}.scale.weight\n        shape: [hidden_size]\n        role: replicated\n"
       "        quantized: true\n",
       {"bad.yaml:21", "model.layers.0.scale.weight F32[8] is marked quantized"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    auto r = ModelRules::Parse(base + c.extra, "bad.yaml");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ModelConfig config = Tiny();
    config.torch_dtype = DType::kF32;
    auto d = r->Describe(config);
    EXPECT_EQ(d.status().code(), ErrorCode::kInvalidArgument) << d.status().ToString();
    for (const std::string& text : c.says) EXPECT_MESSAGE_HAS(d.status(), text);
  }
  // The same parts fused as vLLM does (up twice is not a model, but concatenates): accepted.
  auto ok = ModelRules::Parse(base +
                                  "      - fuse: model.layers.{layer}.mlp.up_up\n"
                                  "        parts: [\"model.layers.{layer}.mlp.up_proj\", "
                                  "\"model.layers.{layer}.mlp.up_proj\"]\n",
                              "ok.yaml");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE(ok->Describe(Tiny()).ok());
}

// num_attention_heads and intermediate_size were required of every config, so a family without
// attention heads or a dense MLP (a state-space model) could not be described even by rules that
// never name them. They are optional now: such rules describe the model (TP layouts of it:
// EngineLayout.AModelWithoutAttentionHeadsSplitsByItsRoles), while rules that do use an absent one
// fail naming it.
TEST(ModelRulesBadInput, AConfigWithoutHeadsOrDenseMlpIsDescribedByRulesThatDoNotNeedThem) {
  auto config = ParseModelConfig(R"({"model_type": "ssm-toy", "hidden_size": 8, "num_hidden_layers": 2,
                                     "vocab_size": 10, "state_size": 4, "torch_dtype": "float32"})",
                                 "ssm.json");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->num_attention_heads, 0);
  EXPECT_EQ(config->intermediate_size, 0);
  auto rules = ModelRules::Parse(R"(family: ssm-toy
model_types: [ssm-toy]
tensors:
  - tensor: model.embed_tokens.weight
    shape: [vocab_size, hidden_size]
    role: vocab
  - for: layer
    count: num_hidden_layers
    do:
      - linear: model.layers.{layer}.mixer.in_proj
        out: 2 * hidden_size
        in: hidden_size
        role: column
      - linear: model.layers.{layer}.mixer.out_proj
        out: hidden_size
        in: hidden_size
        role: row
)",
                                 "ssm.yaml");
  ASSERT_TRUE(rules.ok()) << rules.status().ToString();
  auto d = rules->Describe(*config);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->tensors.size(), 5u);
  // The llama rules name the heads: a llama config without them fails naming the key.
  auto llama = ParseModelConfig(R"({"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2,
                                    "vocab_size": 10, "intermediate_size": 16})",
                                "llama.json");
  ASSERT_TRUE(llama.ok()) << llama.status().ToString();
  auto described = DescribeModel(*llama);
  EXPECT_EQ(described.status().code(), ErrorCode::kInvalidArgument) << described.status().ToString();
  EXPECT_MESSAGE_HAS(described.status(), "num_attention_heads is missing");
  EXPECT_MESSAGE_HAS(described.status(), "llama.yaml:");
}

TEST(ModelRulesBadInput, PatternMatchingNothingInTheCheckpoint) {
  std::string text = kGood;
  text.replace(text.find("up_proj"), 7, "up_prj");
  auto r = ModelRules::Parse(text, "miss.yaml");
  ASSERT_TRUE(r.ok());
  auto d = r->Describe(Tiny());
  ASSERT_TRUE(d.ok());
  const std::vector<TensorSpec> checkpoint = {
      {"model.embed_tokens.weight", DType::kBF16, {10, 8}},
      {"model.layers.0.mlp.up_proj.weight", DType::kBF16, {16, 8}},
      {"model.layers.1.mlp.up_proj.weight", DType::kBF16, {16, 8}},
  };
  Status s = CheckRulesCoverCheckpoint(*d, checkpoint, "ckpt");
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch);
  EXPECT_MESSAGE_HAS(s, "miss.yaml:10");
  EXPECT_MESSAGE_HAS(s, "matches nothing");

  auto good = ModelRules::Parse(kGood, "toy.yaml")->Describe(Tiny());
  ASSERT_TRUE(good.ok());
  EXPECT_TRUE(CheckRulesCoverCheckpoint(*good, checkpoint, "ckpt").ok());
  auto extra = checkpoint;
  extra.push_back({"model.layers.0.mlp.unknown.weight", DType::kBF16, {4}});
  s = CheckRulesCoverCheckpoint(*good, extra, "ckpt");
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch);
  EXPECT_MESSAGE_HAS(s, "no rule places: model.layers.0.mlp.unknown.weight");

  // With tied word embeddings, an lm_head.weight that copies the embedding is placed (as
  // CheckCheckpointMatchesModel accepts it): `describe` refused the real tiny-qwen3-f32.
  auto with_head = checkpoint;
  with_head.push_back({"lm_head.weight", DType::kBF16, {10, 8}});
  ModelConfig tied = Tiny();
  tied.tie_word_embeddings = true;
  auto tied_model = ModelRules::Parse(kGood, "toy.yaml")->Describe(tied);
  ASSERT_TRUE(tied_model.ok());
  EXPECT_TRUE(CheckRulesCoverCheckpoint(*tied_model, with_head, "ckpt").ok());
  EXPECT_MESSAGE_HAS(CheckRulesCoverCheckpoint(*good, with_head, "ckpt"), "no rule places: lm_head.weight");
  with_head.back().shape = {10, 4};  // not a copy of the embedding
  EXPECT_MESSAGE_HAS(CheckRulesCoverCheckpoint(*tied_model, with_head, "ckpt"), "no rule places: lm_head.weight");
}

// Arithmetic that does not fit int64 is an error naming the expression, not a trap: INT64_MIN / -1
// and INT64_MIN % -1 raised SIGFPE, and -INT64_MIN was undefined.
TEST(ModelRulesBadInput, IntegerOverflowIsAnErrorNotATrap) {
  for (const char* expr : {"(-9223372036854775807 - 1) / -1", "-(-9223372036854775807 - 1)"}) {
    std::string text = kGood;
    text.replace(text.find("out: intermediate_size"), 22, std::string("out: ") + expr);
    auto r = ModelRules::Parse(text, "overflow.yaml");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    auto d = r->Describe(Tiny());
    EXPECT_EQ(d.status().code(), ErrorCode::kInvalidArgument) << expr;
    EXPECT_MESSAGE_HAS(d.status(), "integer overflow");
  }
  // The remainder of INT64_MIN by -1 is 0: a size that is not positive, not a trap.
  std::string text = kGood;
  text.replace(text.find("out: intermediate_size"), 22, "out: (-9223372036854775807 - 1) % -1");
  auto d = ModelRules::Parse(text, "rem.yaml")->Describe(Tiny());
  EXPECT_EQ(d.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(d.status(), "must be positive");
}

// Expressions nested deeper than 256 levels (parentheses, prefix operators, or a chain of binary
// operators, a left-deep tree) are refused while parsing: 200,000 '(' overflowed the parser's
// stack (SIGSEGV).
// A shape whose element count overflows (2^80 here) was described as a tensor of 0 bytes:
// `generate` wrote a checkpoint its own reader refused, `plan` moved 0 bytes for it.
TEST(ModelRulesBadInput, AShapeWithTooManyElementsIsRefusedNamingTheRule) {
  std::string text = kGood;
  text.replace(text.find("[vocab_size, hidden_size]"), 25, "[1048576, 1048576, 1048576, 1048576]");
  auto r = ModelRules::Parse(text, "huge.yaml");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto d = r->Describe(Tiny());
  EXPECT_EQ(d.status().code(), ErrorCode::kInvalidArgument) << d.status().ToString();
  EXPECT_MESSAGE_HAS(d.status(),
                     "huge.yaml:4: model config toy: tensor model.embed_tokens.weight of shape "
                     "[1048576, 1048576, 1048576, 1048576] has more than 2^48 elements");
}

// A for loop's count was not bounded by the tensor limit: 10^9 iterations ran out of memory
// (std::bad_alloc, a crash), two nested 10^5 loops too; a first index near 2^63 overflowed
// `from + count` and made no layer at all, silently.
TEST(ModelRulesBadInput, LoopsAreBoundedAndTheirFirstIndexChecked) {
  const auto describe = [](const std::string& from, const std::string& count, const std::string& inner) {
    std::string text = kGood;
    text.replace(text.find("    count: num_hidden_layers"), 28, "    from: " + from + "\n    count: " + count);
    if (!inner.empty()) {
      text +=
          "  - for: outer\n    count: " + inner + "\n    do:\n      - for: inner\n        count: " + inner +
          "\n        do:\n          - if: inner < 0\n            then:\n              - tensor: never.{outer}.{inner}\n"
          "                shape: [1]\n                role: replicated\n";
    }
    auto r = ModelRules::Parse(text, "loops.yaml");
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->Describe(Tiny()).status() : r.status();
  };
  Status st = describe("0", "1000000000", "");
  EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument) << st.ToString();
  EXPECT_MESSAGE_HAS(st, "loops.yaml:7: model config toy: for layer: from 0 count 1000000000");
  EXPECT_MESSAGE_HAS(st, "more than 4194304 iterations");
  st = describe("9223372036854775807", "2", "");
  EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument) << st.ToString();
  EXPECT_MESSAGE_HAS(st, "from 9223372036854775807 count 2");
  st = describe("0", "num_hidden_layers", "100000");  // 10^10 iterations making no tensor
  EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument) << st.ToString();
  EXPECT_MESSAGE_HAS(st, "more than 4194304 iterations");
  // 2^20 + 1 tensors from loops within the iteration bound: the tensor limit.
  st = describe("0", "1048577", "");
  EXPECT_EQ(st.code(), ErrorCode::kInvalidArgument) << st.ToString();
  EXPECT_MESSAGE_HAS(st, "the rules make more than 1048576 tensors");
  EXPECT_TRUE(describe("3", "num_hidden_layers", "").ok());
}

TEST(ModelRulesBadInput, AnExpressionNestedTooDeeplyIsRefused) {
  const std::string parens = std::string(200'000, '(') + "1" + std::string(200'000, ')');
  std::string chain = "1";
  for (int i = 0; i < 300; ++i) chain += " + 1";
  for (const std::string& expr : {parens, std::string(300, '-') + "1", chain}) {
    std::string text = kGood;
    text.replace(text.find("out: intermediate_size"), 22, "out: " + expr);
    auto r = ModelRules::Parse(text, "deep.yaml");
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument) << expr.substr(0, 40);
    EXPECT_MESSAGE_HAS(r.status(), "nested deeper than 256 levels");
  }
  std::string fine = "1";  // 200 terms: within the bound
  for (int i = 0; i < 199; ++i) fine += " + 1";
  std::string text = kGood;
  text.replace(text.find("out: intermediate_size"), 22, "out: " + fine);
  auto r = ModelRules::Parse(text, "sum.yaml");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->Describe(Tiny()).ok());
}

// A block that uses itself, directly or through another, is refused when the file is loaded
// (describing it recursed until the stack overflowed), naming the cycle.
TEST(ModelRulesBadInput, ABlockThatUsesItselfIsRefusedNamingTheCycle) {
  const std::string direct = std::string(kGood) + "blocks:\n  a:\n    do:\n      - use: a\n";
  auto r = ModelRules::Parse(direct, "self.yaml");
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(r.status(), "block \"a\" uses itself (a -> a)");
  const std::string mutual = std::string(kGood) +
                             "blocks:\n  a:\n    do:\n      - use: b\n  b:\n    do:\n      - for: layer\n"
                             "        count: 2\n        do:\n          - use: a\n";
  r = ModelRules::Parse(mutual, "mutual.yaml");
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(r.status(), "uses itself (a -> b -> a)");
}

// A tensor of more than kMaxTensorDims dimensions overran a layout's inline box (a segfault at
// 64 dimensions, silent memory corruption at 7-63); a YAML alias that makes a rule list contain
// itself recursed until the stack ran out.
TEST(ModelRulesBadInput, TooManyDimensionsAndSelfContainingAliasesAreRefused) {
  std::string text = kGood;
  text.replace(text.find("[vocab_size, hidden_size]"), 25, "[1, 1, 1, 1, 1, 1, 2]");
  auto r = ModelRules::Parse(text, "rank7.yaml");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto d = r->Describe(Tiny());
  EXPECT_EQ(d.status().code(), ErrorCode::kInvalidArgument) << d.status().ToString();
  EXPECT_MESSAGE_HAS(d.status(), "rank7.yaml:4: model config toy: tensor model.embed_tokens.weight has 7 dimensions");
  std::string six = kGood;
  six.replace(six.find("[vocab_size, hidden_size]"), 25, "[1, 1, 1, 1, vocab_size, hidden_size]");
  auto ok = ModelRules::Parse(six, "rank6.yaml");
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE(ok->Describe(Tiny()).ok()) << "six dimensions are allowed";

  const std::string alias =
      "family: toy\nmodel_types: [toy]\ntensors: &t\n  - tensor: a.weight\n    shape: [2]\n    role: replicated\n"
      "  - for: layer\n    count: 1\n    do: *t\n";
  auto looped = ModelRules::Parse(alias, "alias.yaml");
  EXPECT_EQ(looped.status().code(), ErrorCode::kInvalidArgument) << looped.status().ToString();
  EXPECT_MESSAGE_HAS(looped.status(), "alias.yaml:");
  EXPECT_MESSAGE_HAS(looped.status(), "rule lists nest more than 64 deep");

  // Aliases used twice inside each other double the rules at each level: 2^40 rules from 3 KB
  // (with n = 18 it took 17 s and 1.9 GB before the bound; n = 40 would never end).
  std::string laughs =
      "family: toy\nmodel_types: [toy]\nblocks:\n  b0: {do: &l0 [{tensor: a.weight, shape: [2], "
      "role: replicated}]}\n";
  for (int k = 1; k <= 40; ++k) {
    laughs += fmt::format("  b{0}: {{do: &l{0} [{{if: \"0\", then: *l{1}, else: *l{1}}}]}}\n", k, k - 1);
  }
  laughs += "tensors: *l40\n";
  auto exploded = ModelRules::Parse(laughs, "laughs.yaml");
  EXPECT_EQ(exploded.status().code(), ErrorCode::kInvalidArgument) << exploded.status().ToString();
  EXPECT_MESSAGE_HAS(exploded.status(), "laughs.yaml:");
  EXPECT_MESSAGE_HAS(exploded.status(), "loads more than 100000 rules");
}

TEST(ModelRulesBadInput, UndefinedBlockAndParameters) {
  const std::string text = std::string(kGood) + "  - use: missing_block\n";
  auto r = ModelRules::Parse(text, "use.yaml");
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(r.status(), "use.yaml:14: use of undefined block \"missing_block\"");
}

TEST(ModelRulesBadInput, UserRulesWinOverBuiltInAndUnknownTypesAreUnsupported) {
  ModelConfig c = Tiny();
  EXPECT_EQ(DescribeModel(c).status().code(), ErrorCode::kUnsupported);
  auto r = ModelRules::Parse(kGood, "toy.yaml");
  ASSERT_TRUE(r.ok());
  AddUserModelRules(*r);
  EXPECT_TRUE(DescribeModel(c).ok());
  // A user file for llama replaces the built-in llama rules.
  std::string llama = kGood;
  llama.replace(llama.find("[toy]"), 5, "[llama]");
  AddUserModelRules(*ModelRules::Parse(llama, "my_llama.yaml"));
  c.model_type = "llama";
  auto d = DescribeModel(c);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->tensors.size(), 3u);
  ClearUserModelRules();
  d = DescribeModel(c);
  ASSERT_TRUE(d.ok());
  EXPECT_GT(d->tensors.size(), 3u);
  c.model_type = "toy";
  EXPECT_EQ(DescribeModel(c).status().code(), ErrorCode::kUnsupported);
}

// Two --model-rules files for one model_type: the last one won without a word, so which rules
// described the model depended on the order of the command line. The second is refused, naming
// both; loading the same file again is accepted.
TEST(ModelRulesBadInput, TwoRulesFilesForOneModelTypeAreRefusedNamingBoth) {
  testing::TempDir dir;
  testing::WriteBytes(dir.File("a.yaml"), kGood);
  testing::WriteBytes(dir.File("b.yaml"), kGood);
  ASSERT_TRUE(LoadUserModelRules(dir.File("a.yaml")).ok());
  EXPECT_TRUE(LoadUserModelRules(dir.File("a.yaml")).ok());
  const Status second = LoadUserModelRules(dir.File("b.yaml"));
  EXPECT_EQ(second.code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(second, "b.yaml: model_type \"toy\" is described by ");
  EXPECT_MESSAGE_HAS(second, "a.yaml already");
  ClearUserModelRules();
}

}  // namespace
}  // namespace shardwire
