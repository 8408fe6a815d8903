// GenerateCheckpoint / GenerateCheckpointDirectory / FillSyntheticTensor.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "model/test_util.h"
#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/safetensors.h"

namespace shardwire {
namespace {

using testing::Fnv1a64;
using testing::TempDir;

// Qwen3-like shapes, small enough for a unit test (written by hand, no shared/ needed).
ModelConfig SmallQwen3(DType dtype) {
  ModelConfig c;
  c.architecture = "Qwen3ForCausalLM";
  c.model_type = "qwen3";
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.intermediate_size = 96;
  c.vocab_size = 300;
  c.torch_dtype = dtype;
  return c;
}

ModelDescription Describe(const ModelConfig& c) {
  auto d = DescribeModel(c);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return d.ok() ? *d : ModelDescription{};
}

TEST(CheckpointGenerator, WritesTheDescribedTensorsWithSmallFiniteValues) {
  TempDir dir;
  for (DType dtype : {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    const ModelDescription d = Describe(SmallQwen3(dtype));
    const std::string path = dir.File("gen.safetensors");
    ASSERT_TRUE(GenerateCheckpoint(d, path, {.seed = 5}).ok());
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    EXPECT_EQ(file->metadata().at("seed"), "5");
    EXPECT_TRUE(CheckCheckpointMatchesModel(d, file->tensors(), path).ok());
    EXPECT_EQ(file->data_size(), d.total_bytes());
    for (const auto& t : d.tensors) {
      auto view = file->Get(t.spec.name);
      ASSERT_TRUE(view.ok());
      const bool norm = t.spec.name.ends_with("norm.weight");
      double sum = 0, sum_sq = 0, max_abs = 0;
      const std::size_t es = DTypeSize(dtype);
      const std::size_t n = view->data.size() / es;
      for (std::size_t i = 0; i < n; ++i) {
        const float v = LoadAsFloat(dtype, view->data.data() + i * es) - (norm ? 1.0f : 0.0f);
        ASSERT_TRUE(std::isfinite(v)) << t.spec.name;
        sum += v;
        sum_sq += double(v) * v;
        max_abs = std::max(max_abs, std::fabs(double(v)));
      }
      EXPECT_LE(max_abs, 0.08) << t.spec.name;
      if (n >= 4096) {  // big tensors: mean ~0, std ~0.02
        EXPECT_NEAR(sum / n, 0.0, 0.002) << t.spec.name;
        EXPECT_NEAR(std::sqrt(sum_sq / n), 0.02, 0.003) << t.spec.name;
      }
    }
  }
}

TEST(CheckpointGenerator, DeterministicAndSeedDependent) {
  TempDir dir;
  const ModelDescription d = Describe(SmallQwen3(DType::kBF16));
  ASSERT_TRUE(GenerateCheckpoint(d, dir.File("a.safetensors"), {.seed = 7}).ok());
  ASSERT_TRUE(GenerateCheckpoint(d, dir.File("b.safetensors"), {.seed = 7}).ok());
  ASSERT_TRUE(GenerateCheckpoint(d, dir.File("c.safetensors"), {.seed = 8}).ok());
  auto a = SafetensorsFile::Open(dir.File("a.safetensors"));
  auto b = SafetensorsFile::Open(dir.File("b.safetensors"));
  auto c = SafetensorsFile::Open(dir.File("c.safetensors"));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  const auto name = "model.layers.1.mlp.up_proj.weight";
  EXPECT_EQ(Fnv1a64(a->Get(name)->data), Fnv1a64(b->Get(name)->data));
  EXPECT_NE(Fnv1a64(a->Get(name)->data), Fnv1a64(c->Get(name)->data));
  // Different tensors of the same shape get different values.
  EXPECT_NE(Fnv1a64(a->Get("model.layers.0.mlp.up_proj.weight")->data),
            Fnv1a64(a->Get("model.layers.0.mlp.gate_proj.weight")->data));
}

TEST(CheckpointGenerator, FillSyntheticTensorRegeneratesAnyRange) {
  TempDir dir;
  const ModelDescription d = Describe(SmallQwen3(DType::kBF16));
  ASSERT_TRUE(GenerateCheckpoint(d, dir.File("g.safetensors"), {.seed = 3}).ok());
  auto file = SafetensorsFile::Open(dir.File("g.safetensors"));
  ASSERT_TRUE(file.ok());
  auto view = file->Get("model.embed_tokens.weight");
  ASSERT_TRUE(view.ok());
  std::vector<std::byte> part(1002);
  ASSERT_TRUE(FillSyntheticTensor(view->spec, 3, 5000, part).ok());
  EXPECT_EQ(std::memcmp(part.data(), view->data.data() + 5000, part.size()), 0);
  EXPECT_EQ(FillSyntheticTensor(view->spec, 3, 5001, part).code(), ErrorCode::kInvalidArgument);

  // Integer dtypes get random bits, deterministically.
  const TensorSpec ids{"ids", DType::kU32, {64}};
  std::vector<std::byte> x(256), y(256);
  ASSERT_TRUE(FillSyntheticTensor(ids, 1, 0, x).ok());
  ASSERT_TRUE(FillSyntheticTensor(ids, 1, 0, y).ok());
  EXPECT_EQ(x, y);
  EXPECT_NE(Fnv1a64(x), Fnv1a64(std::vector<std::byte>(256)));
}

TEST(CheckpointGenerator, LayerOverrideAndSelfDescribingDirectory) {
  TempDir dir;
  const ModelDescription d = Describe(SmallQwen3(DType::kBF16));
  const std::string out = dir.File("qwen3-3layers");
  ASSERT_TRUE(GenerateCheckpointDirectory(d, out, {.num_layers_override = 3, .seed = 1}).ok());
  auto cp = Checkpoint::Open(out);
  ASSERT_TRUE(cp.ok()) << cp.status().ToString();
  EXPECT_EQ(cp->path(), out + "/model.safetensors");
  ASSERT_EQ(cp->config_path(), out + "/config.json");
  EXPECT_TRUE(cp->Contains("model.layers.2.self_attn.k_norm.weight"));
  EXPECT_FALSE(cp->Contains("model.layers.3.self_attn.k_norm.weight"));
  auto config = LoadModelConfig(cp->config_path());
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->num_hidden_layers, 3);
  EXPECT_EQ(config->torch_dtype, DType::kBF16);
  auto described = DescribeModel(*config);
  ASSERT_TRUE(described.ok());
  EXPECT_TRUE(CheckCheckpointMatchesModel(*described, cp->tensors(), out).ok());
  EXPECT_FALSE(CheckCheckpointMatchesModel(d, cp->tensors(), out).ok());  // 2-layer original
}

TEST(CheckpointGenerator, RealArchitectureShapesWhenAvailable) {
  SW_REQUIRE_MODELS_DIR(models);
  // Llama-3.1-8B's layer shapes with a cut vocabulary would not be the real model; keep the
  // real config and just describe 1 layer without writing it (2.5 GB): check the plan.
  auto config = LoadModelConfig(models + "/Llama-3.1-8B/config.json");
  ASSERT_TRUE(config.ok());
  auto full = DescribeModel(*config);
  ASSERT_TRUE(full.ok());
  auto one = WithLayers(*full, 1);
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->tensors.size(), 12u);
  EXPECT_EQ(one->total_bytes(), 2'101'346'304u + 436'224'000u + 8192u);
}

}  // namespace
}  // namespace shardwire
