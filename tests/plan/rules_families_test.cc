// The families added as rules files (models/rules/: glm4_moe, qwen2_moe, olmo2, gemma2,
// gemma3_text, granite), each from a real HF config (tests/model/data/, sources in its
// README.md): the full model is described and its parameter count checked against the
// published figure (an independent check of the names x shapes the rules produce); then
// the same config shrunk to tiny sizes is generated as a checkpoint, described back from
// the checkpoint directory, checked against the file (names, shapes, dtypes, every
// checkpoint tensor placed by a rule), planned TP=2 -> FSDP=2 and back, and both plans
// are checked byte for byte by the plan oracle.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "plan_oracle.h"
#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/checkpoint_model.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"
#include "shardwire/model_layouts.h"
#include "shardwire/model_rules.h"
#include "shardwire/planner.h"

namespace shardwire {
namespace {

std::string DataDir() { return std::string(SHARDWIRE_SOURCE_DIR) + "/tests/model/data"; }

struct Family {
  const char* model_type;
  double published_params;  // headline figure of the model card
  const char* probe;        // a tensor name only this family's rules produce (full config)
};

constexpr Family kFamilies[] = {
    {"glm4_moe", 355e9, "model.layers.92.eh_proj.weight"},
    {"qwen2_moe", 14.3e9, "model.layers.0.mlp.shared_expert_gate.weight"},
    {"olmo2", 7.30e9, "model.layers.0.post_feedforward_layernorm.weight"},
    {"gemma2", 9.24e9, "model.layers.0.pre_feedforward_layernorm.weight"},
    {"gemma3_text", 1.00e9, "model.layers.0.self_attn.q_norm.weight"},
    {"granite", 2.53e9, "model.layers.39.mlp.down_proj.weight"},
};

ModelConfig Shrink(ModelConfig c) {
  c.hidden_size = 64;
  c.num_attention_heads = 4;
  c.num_key_value_heads = c.num_key_value_heads == 1 ? 1 : 2;
  c.head_dim = 16;
  c.intermediate_size = 96;
  c.vocab_size = 128;
  if (c.num_experts.has_value()) c.num_experts = 4;
  if (c.moe_intermediate_size.has_value()) c.moe_intermediate_size = 32;
  if (c.first_k_dense_replace.has_value()) c.first_k_dense_replace = 1;
  if (c.extra.count("shared_expert_intermediate_size") > 0) c.extra["shared_expert_intermediate_size"] = "48";
  c.num_hidden_layers = 3;
  return c;
}

class RulesFamily : public ::testing::TestWithParam<Family> {};

TEST_P(RulesFamily, FullConfigMatchesPublishedSize) {
  const Family& f = GetParam();
  auto config = LoadModelConfig(DataDir() + "/" + f.model_type + ".json");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ASSERT_NE(FindBuiltinModelRules(f.model_type), nullptr);
  auto d = DescribeModel(*config);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_NE(d->Find(f.probe), nullptr) << f.probe;
  const double params = static_cast<double>(d->total_params());
  std::printf("%s: %zu tensors, %.3fB parameters (published %.2fB)\n", f.model_type, d->tensors.size(), params / 1e9,
              f.published_params / 1e9);
  EXPECT_NEAR(params, f.published_params, 0.015 * f.published_params);
  for (const auto& t : d->tensors) {
    ASSERT_GE(t.rule, 0) << t.spec.name;
  }
}

TEST_P(RulesFamily, GeneratedCheckpointDescribesPlansAndRoundTrips) {
  const Family& f = GetParam();
  auto full = LoadModelConfig(DataDir() + "/" + f.model_type + ".json");
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  const ModelConfig small = Shrink(*full);
  auto d = DescribeModel(small);
  ASSERT_TRUE(d.ok()) << d.status().ToString();

  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("sw_rules_family_" + std::string(f.model_type) + "_" + std::to_string(::getpid())))
                              .string();
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(GenerateCheckpointDirectory(*d, dir).ok());
  auto cp = Checkpoint::Open(dir);
  ASSERT_TRUE(cp.ok()) << cp.status().ToString();
  auto back = DescribeCheckpointModel(*cp);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->tensors, d->tensors);
  EXPECT_EQ(back->fused, d->fused);
  EXPECT_TRUE(CheckCheckpointMatchesModel(*back, cp->tensors(), dir).ok());
  EXPECT_TRUE(CheckRulesCoverCheckpoint(*back, cp->tensors(), dir).ok());

  auto tp = MakeTpLayoutForModel(*back, 2, 1);
  ASSERT_TRUE(tp.ok()) << tp.status().ToString();
  auto fsdp = MakeFsdpLayoutForModel(*back, 2);
  ASSERT_TRUE(fsdp.ok()) << fsdp.status().ToString();
  auto plan = PlanTransfer(*tp, *fsdp);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(testing::CheckPlanAgainstOracle(*tp, *fsdp, *plan), "");
  auto plan_back = PlanTransfer(*fsdp, *tp);
  ASSERT_TRUE(plan_back.ok()) << plan_back.status().ToString();
  EXPECT_EQ(testing::CheckPlanAgainstOracle(*fsdp, *tp, *plan_back), "");
  std::filesystem::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Families, RulesFamily, ::testing::ValuesIn(kFamilies),
                         [](const auto& p) { return std::string(p.param.model_type); });

}  // namespace
}  // namespace shardwire
