// InferModelRules on every tiny checkpoint in ../shared/models with its family's rules
// hidden (called directly, never consulting the built-in files): the inferred rules
// describe every tensor with the name, dtype, shape, role, layer and expert the family's
// rules file gives, and the same fused parameters. Checkpoints whose names are not the
// usual HF ones (GPT-2's Conv1D c_attn, MLX's packed .scales/.biases) and a hand-made
// checkpoint with an unknown module are typed errors naming the tensor.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <tuple>

#include "model/test_util.h"
#include "shardwire/checkpoint.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"
#include "shardwire/model_rules.h"

namespace shardwire {
namespace {

struct Loaded {
  ModelConfig config;
  std::vector<TensorSpec> tensors;
};

Loaded Load(const std::string& models, const std::string& file, const std::string& config_file) {
  auto cp = Checkpoint::Open(models + "/" + file);
  EXPECT_TRUE(cp.ok()) << cp.status().ToString();
  auto config = LoadModelConfig(models + "/" + config_file);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  Loaded l{config.ok() ? *config : ModelConfig{}, cp.ok() ? cp->tensors() : std::vector<TensorSpec>{}};
  if (!l.config.torch_dtype.has_value() && cp.ok()) {
    if (auto e = cp->Get("model.embed_tokens.weight"); e.ok()) l.config.torch_dtype = e->spec.dtype;
  }
  return l;
}

using Row = std::tuple<std::string, std::vector<std::int64_t>, ParallelRole, int, int>;

std::map<std::string, Row> Rows(const ModelDescription& d) {
  std::map<std::string, Row> out;
  for (const auto& t : d.tensors) {
    out[t.spec.name] = Row{std::string(DTypeName(t.spec.dtype)), t.spec.shape, t.role, t.layer, t.expert};
  }
  return out;
}

std::set<std::string> Fused(const ModelDescription& d) {
  std::set<std::string> out;
  for (const auto& f : d.fused) {
    std::string s = f.name + " =";
    for (const auto& p : f.parts) s += " " + p;
    out.insert(s);
  }
  return out;
}

// Every tiny checkpoint of ../shared/models with a family's rules: (checkpoint, its config).
constexpr std::pair<const char*, const char*> kTinyCheckpoints[] = {
    {"tiny-llama3-bf16/model.safetensors", "tiny-llama3-bf16/config.json"},
    {"tiny-llama-f32-sharded/tiny_llama.safetensors.index.json", "tiny-llama-f32-sharded/tiny_llama_config.json"},
    {"tiny-qwen3-bf16/model.safetensors", "tiny-qwen3-bf16/config.json"},
    {"tiny-qwen3-f32/tiny_qwen3.safetensors", "tiny-qwen3-f32/tiny_qwen3_config.json"},
    {"tiny-qwen2-f32/tiny_qwen2.safetensors", "tiny-qwen2-f32/tiny_qwen2_config.json"},
    {"tiny-mistral-f32/tiny_mistral.safetensors", "tiny-mistral-f32/tiny_mistral_config.json"},
    {"tiny-qwen3-moe-f32/tiny_qwen3_moe.safetensors", "tiny-qwen3-moe-f32/tiny_qwen3_moe_config.json"},
    {"tiny-mixtral-f32/tiny_mixtral.safetensors", "tiny-mixtral-f32/tiny_mixtral_config.json"},
    {"tiny-deepseek-v2-f32/tiny_deepseek_v2.safetensors", "tiny-deepseek-v2-f32/tiny_deepseek_v2_config.json"},
};

TEST(InferModelRules, EveryTinyCheckpointAsItsFamilyRulesSay) {
  SW_REQUIRE_MODELS_DIR(models);
  for (const auto& [file, config_file] : kTinyCheckpoints) {
    SCOPED_TRACE(file);
    const Loaded l = Load(models, file, config_file);
    auto inferred = InferModelRules(l.config, l.tensors, file);
    ASSERT_TRUE(inferred.ok()) << inferred.status().ToString();
    auto from_inferred = inferred->Describe(l.config);
    ASSERT_TRUE(from_inferred.ok()) << from_inferred.status().ToString();
    auto from_family = DescribeModel(l.config);
    ASSERT_TRUE(from_family.ok()) << from_family.status().ToString();
    EXPECT_EQ(Rows(*from_inferred), Rows(*from_family));
    EXPECT_EQ(Fused(*from_inferred), Fused(*from_family));
    // Round trip through the YAML text: the written file parses back to the same rules.
    auto reparsed = ModelRules::Parse(inferred->text(), "written.yaml");
    ASSERT_TRUE(reparsed.ok()) << reparsed.status().ToString();
    auto again = reparsed->Describe(l.config);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(Rows(*again), Rows(*from_inferred));
  }
}

// Each dimension is tied to the config key of its module, not to whichever key happens to hold
// the same value in the tiny config: tiny-qwen3-moe's intermediate_size equals num_attention_heads
// * head_dim (q_proj and o_proj were written as intermediate_size), tiny-deepseek-v2's head_dim
// equals num_experts (the router was [head_dim, hidden_size]) and its moe_intermediate_size equals
// kv_lora_rank. The rules inferred from each tiny checkpoint must describe a config of the same
// family whose sizes all differ exactly as the family's own rules do.
TEST(InferModelRules, DimensionsFollowTheirModuleNotACoincidentConfigValue) {
  SW_REQUIRE_MODELS_DIR(models);
  for (const auto& [file, config_file] : kTinyCheckpoints) {
    SCOPED_TRACE(file);
    const Loaded l = Load(models, file, config_file);
    auto inferred = InferModelRules(l.config, l.tensors, file);
    ASSERT_TRUE(inferred.ok()) << inferred.status().ToString();
    ModelConfig other = l.config;  // every size moved to a value no other key has
    other.hidden_size = 104;
    other.intermediate_size = 232;
    other.vocab_size = 1013;
    if (other.moe_intermediate_size) other.moe_intermediate_size = 56;
    if (other.q_lora_rank) other.q_lora_rank = 72;
    if (other.kv_lora_rank) other.kv_lora_rank = 40;
    auto want = DescribeModel(other);
    ASSERT_TRUE(want.ok()) << want.status().ToString();
    auto got = inferred->Describe(other);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(Rows(*got), Rows(*want)) << inferred->text();
  }
}

TEST(InferModelRules, UnusualNamesAreTypedErrorsNamingTheTensor) {
  SW_REQUIRE_MODELS_DIR(models);
  {
    const Loaded l = Load(models, "tiny-gpt2-cicd/model.safetensors", "tiny-gpt2-cicd/config.json");
    auto r = InferModelRules(l.config, l.tensors, "tiny-gpt2");
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_MESSAGE_HAS(r.status(), "cannot place tensor transformer.h.0.");
    EXPECT_MESSAGE_HAS(r.status(), "--model-rules");
  }
  {
    const Loaded l = Load(models, "tiny-qwen3-sharded-mlx4bit/model.safetensors.index.json",
                          "tiny-qwen3-sharded-mlx4bit/config.json");
    auto r = InferModelRules(l.config, l.tensors, "mlx");
    EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_MESSAGE_HAS(r.status(), "cannot place tensor");
  }
}

TEST(InferModelRules, HandMadeUnplaceableTensor) {
  SW_REQUIRE_MODELS_DIR(models);
  Loaded l = Load(models, "tiny-llama3-bf16/model.safetensors", "tiny-llama3-bf16/config.json");
  ASSERT_TRUE(InferModelRules(l.config, l.tensors, "ok").ok());
  l.tensors.push_back(TensorSpec{"model.layers.0.mlp.mystery_proj.weight", DType::kBF16, {64, 64}});
  auto r = InferModelRules(l.config, l.tensors, "hand-made");
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(r.status(), "model.layers.0.mlp.mystery_proj.weight");
  EXPECT_MESSAGE_HAS(r.status(), "- tensor: model.layers.{layer}.mlp.mystery_proj.weight");

  // A usual name whose shape no config value gives is not guessed either.
  l.tensors.pop_back();
  l.tensors.push_back(TensorSpec{"model.layers.0.mlp.extra.q_proj.weight", DType::kBF16, {999, 64}});
  r = InferModelRules(l.config, l.tensors, "hand-made");
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(r.status(), "dim 0 is 999");
}

}  // namespace
}  // namespace shardwire
