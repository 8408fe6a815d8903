// DescribeModel against real configs and checkpoints; CheckCheckpointMatchesModel's
// mismatch reports.
#include <gtest/gtest.h>

#include <algorithm>

#include "model/test_util.h"
#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_model.h"
#include "shardwire/model_description.h"

namespace shardwire {
namespace {


TEST(ParallelRole, NamesAndDims) {
  EXPECT_EQ(ParallelRoleName(ParallelRole::kColumn), "column");
  EXPECT_EQ(ParallelRoleName(ParallelRole::kRow), "row");
  EXPECT_EQ(ParallelRoleName(ParallelRole::kVocab), "vocab");
  EXPECT_EQ(ParallelRoleName(ParallelRole::kReplicated), "replicated");
  EXPECT_EQ(ShardDim(ParallelRole::kColumn), 0);
  EXPECT_EQ(ShardDim(ParallelRole::kRow), 1);
  EXPECT_EQ(ShardDim(ParallelRole::kVocab), 0);
  EXPECT_EQ(ShardDim(ParallelRole::kReplicated), -1);
}

TEST(DescribeModel, Llama31_8B) {
  SW_REQUIRE_MODELS_DIR(models);
  auto config = LoadModelConfig(models + "/Llama-3.1-8B/config.json");
  ASSERT_TRUE(config.ok());
  auto d = DescribeModel(*config);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->tensors.size(), 291u);
  EXPECT_EQ(d->total_params(), 8'030'261'248u);
  EXPECT_EQ(d->total_bytes(), 16'060'522'496u);  // BF16
  EXPECT_EQ(d->tensors.front().spec.name, "model.embed_tokens.weight");
  EXPECT_EQ(d->tensors[1].spec.name, "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(d->tensors[d->tensors.size() - 2].spec.name, "model.norm.weight");
  EXPECT_EQ(d->tensors.back().spec.name, "lm_head.weight");

  struct Expect {
    const char* name;
    std::vector<std::int64_t> shape;
    ParallelRole role;
    int layer;
  };
  const Expect expects[] = {
      {"model.embed_tokens.weight", {128256, 4096}, ParallelRole::kVocab, -1},
      {"model.layers.0.self_attn.q_proj.weight", {4096, 4096}, ParallelRole::kColumn, 0},
      {"model.layers.7.self_attn.k_proj.weight", {1024, 4096}, ParallelRole::kColumn, 7},
      {"model.layers.7.self_attn.v_proj.weight", {1024, 4096}, ParallelRole::kColumn, 7},
      {"model.layers.31.self_attn.o_proj.weight", {4096, 4096}, ParallelRole::kRow, 31},
      {"model.layers.31.mlp.gate_proj.weight", {14336, 4096}, ParallelRole::kColumn, 31},
      {"model.layers.31.mlp.up_proj.weight", {14336, 4096}, ParallelRole::kColumn, 31},
      {"model.layers.31.mlp.down_proj.weight", {4096, 14336}, ParallelRole::kRow, 31},
      {"model.layers.5.post_attention_layernorm.weight", {4096}, ParallelRole::kReplicated, 5},
      {"model.norm.weight", {4096}, ParallelRole::kReplicated, -1},
      {"lm_head.weight", {128256, 4096}, ParallelRole::kVocab, -1},
  };
  for (const auto& e : expects) {
    const ModelTensor* t = d->Find(e.name);
    ASSERT_NE(t, nullptr) << e.name;
    EXPECT_EQ(t->spec.shape, e.shape) << e.name;
    EXPECT_EQ(t->spec.dtype, DType::kBF16) << e.name;
    EXPECT_EQ(t->role, e.role) << e.name;
    EXPECT_EQ(t->layer, e.layer) << e.name;
  }
  EXPECT_EQ(d->Find("model.layers.32.mlp.up_proj.weight"), nullptr);
  EXPECT_EQ(d->Find("model.layers.0.self_attn.q_proj.bias"), nullptr);
  // Layers appear in order.
  int last_layer = -1;
  for (const auto& t : d->tensors) {
    if (t.layer < 0) continue;
    EXPECT_GE(t.layer, last_layer);
    last_layer = t.layer;
  }
}

TEST(DescribeModel, Llama33_70B) {
  SW_REQUIRE_MODELS_DIR(models);
  auto config = LoadModelConfig(models + "/Llama-3.3-70B-Instruct/config.json");
  ASSERT_TRUE(config.ok());
  auto d = DescribeModel(*config);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->tensors.size(), 723u);
  EXPECT_EQ(d->total_params(), 70'553'706'496u);
}

TEST(DescribeModel, WithLayersKeepsShapes) {
  SW_REQUIRE_MODELS_DIR(models);
  auto config = LoadModelConfig(models + "/Llama-3.1-8B/config.json");
  ASSERT_TRUE(config.ok());
  auto full = DescribeModel(*config);
  ASSERT_TRUE(full.ok());
  auto four = WithLayers(*full, 4);
  ASSERT_TRUE(four.ok()) << four.status().ToString();
  EXPECT_EQ(four->config.num_hidden_layers, 4);
  EXPECT_EQ(four->tensors.size(), 39u);
  EXPECT_EQ(four->total_params(), 1'923'125'248u);
  EXPECT_NE(four->Find("model.layers.3.mlp.down_proj.weight"), nullptr);
  EXPECT_EQ(four->Find("model.layers.4.mlp.down_proj.weight"), nullptr);
  EXPECT_EQ(four->Find("model.layers.3.mlp.down_proj.weight")->spec,
            full->Find("model.layers.3.mlp.down_proj.weight")->spec);
  EXPECT_EQ(WithLayers(*full, 0).status().code(), ErrorCode::kInvalidArgument);
}

// Each real dense tiny checkpoint matches the description of its own config exactly.
TEST(DescribeModel, RealTinyCheckpointsMatch) {
  SW_REQUIRE_MODELS_DIR(models);
  struct Case {
    const char* dir;
    std::size_t described;  // tensors in the description
    DType dtype;
  };
  const Case cases[] = {
      {"tiny-llama3-bf16", 21, DType::kBF16},
      {"tiny-qwen3-bf16", 25, DType::kBF16},
      {"tiny-llama-f32-sharded", 21, DType::kF32},  // + rotary_emb.inv_freq buffer, ignored
      {"tiny-qwen2-f32", 27, DType::kF32},          // q/k/v biases
      {"tiny-qwen3-f32", 24, DType::kF32},          // tied: explicit lm_head copy accepted
      {"tiny-mistral-f32", 21, DType::kF32},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.dir);
    const testing::LoadedModel l = testing::LoadRealModel(models, c.dir);
    EXPECT_EQ(l.description.tensors.size(), c.described);
    ASSERT_FALSE(l.description.tensors.empty());
    EXPECT_EQ(l.description.tensors.front().spec.dtype, c.dtype);
    const Status s = CheckCheckpointMatchesModel(l.description, l.checkpoint_tensors, c.dir);
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
}

TEST(DescribeModel, Qwen2BiasesAndQwen3Norms) {
  SW_REQUIRE_MODELS_DIR(models);
  const testing::LoadedModel qwen2 = testing::LoadRealModel(models, "tiny-qwen2-f32");
  const ModelTensor* qb = qwen2.description.Find("model.layers.1.self_attn.k_proj.bias");
  ASSERT_NE(qb, nullptr);
  EXPECT_EQ(qb->spec.shape, std::vector<std::int64_t>{4});
  EXPECT_EQ(qb->role, ParallelRole::kColumn);
  EXPECT_EQ(qwen2.description.Find("model.layers.1.self_attn.o_proj.bias"), nullptr);

  const testing::LoadedModel qwen3 = testing::LoadRealModel(models, "tiny-qwen3-f32");
  const ModelTensor* qn = qwen3.description.Find("model.layers.0.self_attn.q_norm.weight");
  ASSERT_NE(qn, nullptr);
  EXPECT_EQ(qn->spec.shape, std::vector<std::int64_t>{6});  // head_dim, not hidden/heads
  EXPECT_EQ(qn->role, ParallelRole::kReplicated);
  EXPECT_EQ(qwen3.description.Find("lm_head.weight"), nullptr);  // tied
  EXPECT_EQ(qwen3.description.Find("model.layers.0.self_attn.o_proj.weight")->spec.shape,
            (std::vector<std::int64_t>{8, 12}));
}

TEST(DescribeModel, LlamaAttentionAndMlpBiases) {
  ModelConfig c;
  c.model_type = "llama";
  c.hidden_size = 8;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.intermediate_size = 12;
  c.vocab_size = 10;
  c.attention_bias = true;
  c.mlp_bias = true;
  auto d = DescribeModel(c);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->tensors.size(), 1u + 9u + 7u + 2u);  // 4 attention + 3 MLP biases
  EXPECT_EQ(d->Find("model.layers.0.self_attn.o_proj.bias")->role, ParallelRole::kReplicated);
  EXPECT_EQ(d->Find("model.layers.0.mlp.down_proj.bias")->role, ParallelRole::kReplicated);
  EXPECT_EQ(d->Find("model.layers.0.mlp.up_proj.bias")->role, ParallelRole::kColumn);
  EXPECT_EQ(d->Find("model.layers.0.self_attn.v_proj.bias")->spec.shape, std::vector<std::int64_t>{4});
  c.intermediate_size = 0;
  EXPECT_EQ(DescribeModel(c).status().code(), ErrorCode::kInvalidArgument);
}

// A config.json is untrusted (fuzz/model_config_fuzzer.cc): sizes whose shape products
// would overflow int64 (undefined behaviour in TensorSpec::numel) and counts that would
// build billions of tensors are rejected before anything is built.
TEST(DescribeModel, RejectsSizesBeyondTheLimits) {
  auto parse = [](const std::string& extra) {
    auto c = ParseModelConfig(R"({"model_type": "qwen3_moe", "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "moe_intermediate_size": 32,
        "num_experts_per_tok": 2, )" + extra + "}",
                              "test");
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return *c;
  };
  // Within the limits: described.
  auto ok = DescribeModel(parse(R"("hidden_size": 64, "num_hidden_layers": 2, "num_experts": 4, "vocab_size": 1048576)"));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  // vocab_size one past the limit: its embedding alone would be fine, but the bound is uniform.
  auto vocab = DescribeModel(parse(R"("hidden_size": 64, "num_hidden_layers": 2, "num_experts": 4, "vocab_size": 1048577)"));
  EXPECT_EQ(vocab.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(vocab.status(), "vocab_size is 1048577");
  // hidden_size 2^40: embed [vocab, hidden] x q_proj would overflow int64 elements.
  auto hidden = DescribeModel(parse(R"("num_hidden_layers": 2, "num_experts": 4, "vocab_size": 256,
      "hidden_size": 1099511627776)"));
  EXPECT_EQ(hidden.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(hidden.status(), "hidden_size");
  // 2^20 layers of 2^20 experts each (every size within the limit): ~2^42 tensors.
  auto count = DescribeModel(parse(R"("hidden_size": 64, "num_hidden_layers": 1048576, "num_experts": 1048576,
      "vocab_size": 256)"));
  EXPECT_EQ(count.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(count.status(), "tensors per model");
}

TEST(DescribeModel, UnsupportedFamilies) {
  SW_REQUIRE_MODELS_DIR(models);
  // MoE / MLA families are described now (moe_mla_description_test.cc); GPT-2 is not.
  for (const char* rel : {"tiny-gpt2-cicd/config.json"}) {
    auto config = LoadModelConfig(models + "/" + rel);
    ASSERT_TRUE(config.ok()) << rel;
    auto d = DescribeModel(*config);
    EXPECT_EQ(d.status().code(), ErrorCode::kUnsupported) << rel;
    EXPECT_MESSAGE_HAS(d.status(), "\"" + config->model_type + "\"");
  }
}

TEST(CheckCheckpointMatchesModel, LayerCountDisagrees) {
  SW_REQUIRE_MODELS_DIR(models);
  const testing::LoadedModel l = testing::LoadRealModel(models, "tiny-llama3-bf16");
  auto three = WithLayers(l.description, 3);
  ASSERT_TRUE(three.ok());
  Status s = CheckCheckpointMatchesModel(*three, l.checkpoint_tensors, "tiny-llama3-bf16");
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch);
  EXPECT_MESSAGE_HAS(s, "tiny-llama3-bf16");
  EXPECT_MESSAGE_HAS(s, "9 differences");  // the 9 tensors of layer 2
  EXPECT_MESSAGE_HAS(s, "missing model.layers.2.self_attn.q_proj.weight BF16[64, 64]");
  EXPECT_MESSAGE_HAS(s, "and 1 more");     // 8 listed

  auto one = WithLayers(l.description, 1);
  ASSERT_TRUE(one.ok());
  s = CheckCheckpointMatchesModel(*one, l.checkpoint_tensors, "tiny-llama3-bf16");
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch);
  EXPECT_MESSAGE_HAS(s, "unexpected model.layers.1.");
}

TEST(CheckCheckpointMatchesModel, WrongShapeNamesExpectedAndFound) {
  SW_REQUIRE_MODELS_DIR(models);
  testing::LoadedModel l = testing::LoadRealModel(models, "tiny-llama3-bf16");
  ModelConfig c = l.description.config;
  c.intermediate_size = 96;
  auto d = DescribeModel(c);
  ASSERT_TRUE(d.ok());
  Status s = CheckCheckpointMatchesModel(*d, l.checkpoint_tensors, "ckpt");
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch);
  EXPECT_MESSAGE_HAS(s, "6 differences");  // gate/up/down x 2 layers
  EXPECT_MESSAGE_HAS(s, "shape of model.layers.0.mlp.gate_proj.weight: expected [96, 64] found [128, 64]");
}

TEST(CheckCheckpointMatchesModel, WrongDtype) {
  SW_REQUIRE_MODELS_DIR(models);
  testing::LoadedModel l = testing::LoadRealModel(models, "tiny-llama3-bf16");
  ModelConfig c = l.description.config;
  c.torch_dtype = DType::kF32;
  auto d = DescribeModel(c);
  ASSERT_TRUE(d.ok());
  Status s = CheckCheckpointMatchesModel(*d, l.checkpoint_tensors, "ckpt");
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch);
  EXPECT_MESSAGE_HAS(s, "21 differences");
  EXPECT_MESSAGE_HAS(s, "dtype of model.embed_tokens.weight: expected F32 found BF16");
}

// A renamed tensor in a checkpoint whose dtype also differs everywhere: the missing and the
// unexpected name are listed first, not cut off behind eight dtype differences.
TEST(CheckCheckpointMatchesModel, NamesAreListedBeforeDtypes) {
  SW_REQUIRE_MODELS_DIR(models);
  testing::LoadedModel l = testing::LoadRealModel(models, "tiny-llama3-bf16");
  ModelConfig c = l.description.config;
  c.torch_dtype = DType::kF32;
  auto d = DescribeModel(c);
  ASSERT_TRUE(d.ok());
  auto renamed = l.checkpoint_tensors;
  auto it = std::find_if(renamed.begin(), renamed.end(),
                         [](const TensorSpec& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; });
  ASSERT_NE(it, renamed.end());
  it->name = "model.layers.1.mlp.up_proj.weight_renamed";
  Status s = CheckCheckpointMatchesModel(*d, renamed, "ckpt");
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch);
  EXPECT_MESSAGE_HAS(s,
                     "22 differences: missing model.layers.1.mlp.up_proj.weight F32[128, 64]; unexpected "
                     "model.layers.1.mlp.up_proj.weight_renamed BF16[128, 64]; dtype of model.embed_tokens.weight");
}

TEST(CheckCheckpointMatchesModel, BuffersIgnoredOtherExtrasReported) {
  SW_REQUIRE_MODELS_DIR(models);
  testing::LoadedModel l = testing::LoadRealModel(models, "tiny-llama-f32-sharded");
  auto with_extra = l.checkpoint_tensors;
  with_extra.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq_scaled", DType::kF32, {2}});
  Status s = CheckCheckpointMatchesModel(l.description, with_extra, "ckpt");
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch);
  EXPECT_MESSAGE_HAS(s, "1 difference:");
  EXPECT_MESSAGE_HAS(s, "unexpected model.layers.0.self_attn.rotary_emb.inv_freq_scaled");
}

TEST(CheckCheckpointMatchesModel, TiedCopyMustMatchEmbedding) {
  SW_REQUIRE_MODELS_DIR(models);
  testing::LoadedModel l = testing::LoadRealModel(models, "tiny-qwen3-f32");
  for (auto& t : l.checkpoint_tensors) {
    if (t.name == "lm_head.weight") t.shape = {12, 8};
  }
  Status s = CheckCheckpointMatchesModel(l.description, l.checkpoint_tensors, "ckpt");
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch);
  EXPECT_MESSAGE_HAS(s, "unexpected lm_head.weight F32[12, 8]");
  // Untied description: lm_head missing from the checkpoint is reported.
  ModelConfig c = l.description.config;
  c.tie_word_embeddings = false;
  auto untied = DescribeModel(c);
  ASSERT_TRUE(untied.ok());
  std::vector<TensorSpec> without;
  for (const auto& t : l.checkpoint_tensors) {
    if (t.name != "lm_head.weight") without.push_back(t);
  }
  s = CheckCheckpointMatchesModel(*untied, without, "ckpt");
  EXPECT_EQ(s.code(), ErrorCode::kLayoutMismatch);
  EXPECT_MESSAGE_HAS(s, "missing lm_head.weight F32[13, 8]");
}

}  // namespace
}  // namespace shardwire
