// Every real safetensors file and index in shared/models (SOURCES.md) opens, with the
// tensor counts and sizes of the SOURCES.md table, and with the same names, dtypes,
// shapes, offsets and bytes as the independent Python oracle reports.
#include <gtest/gtest.h>

#include <map>
#include <sstream>

#include "model/test_util.h"
#include "shardwire/checkpoint.h"
#include "shardwire/safetensors.h"

namespace shardwire {
namespace {

using testing::Fnv1a64;
using testing::Hex16;
using testing::RunOracle;

struct RealFile {
  const char* path;  // relative to models/
  std::size_t tensors;
  std::uint64_t data_bytes;
  std::uint64_t header_bytes;
};

// Copied from shared/models/SOURCES.md, section 4.
constexpr RealFile kRealFiles[] = {
    {"tiny-deepseek-v2-f32/tiny_deepseek_v2.safetensors", 36, 8648, 3616},
    {"tiny-gpt2-cicd/model.safetensors", 16, 23744, 1448},
    {"tiny-llama-f32-sharded/tiny_llama-00001-of-00002.safetensors", 11, 2344, 1064},
    {"tiny-llama-f32-sharded/tiny_llama-00002-of-00002.safetensors", 11, 2368, 1024},
    {"tiny-llama-f32-sharded/tiny_llama.safetensors", 22, 4712, 2080},
    {"tiny-llama3-bf16/model.safetensors", 21, 213632, 2122},
    {"tiny-mistral-f32/tiny_mistral.safetensors", 21, 4704, 1984},
    {"tiny-mixtral-f32/tiny_mixtral.safetensors", 41, 12000, 4328},
    {"tiny-qwen2-f32/tiny_qwen2.safetensors", 27, 4896, 2552},
    {"tiny-qwen3-bf16/model.safetensors", 25, 213760, 2530},
    {"tiny-qwen3-f32/tiny_qwen3.safetensors", 25, 5696, 2376},
    {"tiny-qwen3-moe-f32/tiny_qwen3_moe.safetensors", 45, 7488, 4488},
    {"tiny-qwen3-sharded-mlx4bit/model-00001-of-00002.safetensors", 29, 40384, 2823},
    {"tiny-qwen3-sharded-mlx4bit/model-00002-of-00002.safetensors", 28, 40256, 2749},
};

std::string DescribeLikeOracle(const TensorView& view, std::uint64_t begin) {
  std::ostringstream s;
  s << view.spec.name << ' ' << DTypeName(view.spec.dtype) << ' ';
  if (view.spec.shape.empty()) s << '-';
  for (std::size_t i = 0; i < view.spec.shape.size(); ++i) s << (i ? "," : "") << view.spec.shape[i];
  s << ' ' << begin << ' ' << begin + view.data.size() << ' ' << Hex16(Fnv1a64(view.data));
  return s.str();
}

// name -> fnv hash hex, from the oracle's output for `path`.
std::map<std::string, std::string> OracleHashes(const std::string& path) {
  std::map<std::string, std::string> out;
  const auto lines = RunOracle(path);
  for (std::size_t i = 1; i < lines.size(); ++i) {
    const auto& l = lines[i];
    out[l.substr(0, l.find(' '))] = l.substr(l.rfind(' ') + 1);
  }
  return out;
}

TEST(RealCheckpoints, EverySafetensorsFileMatchesTableAndOracle) {
  SW_REQUIRE_MODELS_DIR(models);
  for (const auto& real : kRealFiles) {
    SCOPED_TRACE(real.path);
    const std::string path = models + "/" + real.path;
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status().ToString();
    EXPECT_EQ(file->tensors().size(), real.tensors);
    EXPECT_EQ(file->data_size(), real.data_bytes);
    EXPECT_EQ(file->data_offset(), 8 + real.header_bytes);
    EXPECT_EQ(file->path(), path);

    const auto oracle = RunOracle(path);
    ASSERT_EQ(oracle.size(), real.tensors + 1);
    EXPECT_EQ(oracle[0], "header " + std::to_string(real.header_bytes) + " " +
                             std::to_string(real.data_bytes));
    const std::byte* data_start = nullptr;
    for (std::size_t i = 0; i < file->tensors().size(); ++i) {
      auto view = file->Get(file->tensors()[i].name);
      ASSERT_TRUE(view.ok()) << view.status().ToString();
      EXPECT_EQ(view->spec, file->tensors()[i]);
      EXPECT_EQ(view->data.size(), view->spec.nbytes());
      if (i == 0) data_start = view->data.data();  // tensors() is in offset order: begin 0
      const auto begin = static_cast<std::uint64_t>(view->data.data() - data_start);
      EXPECT_EQ(DescribeLikeOracle(*view, begin), oracle[i + 1]);
    }
  }
}

TEST(RealCheckpoints, GptMetadataAndNullMetadata) {
  SW_REQUIRE_MODELS_DIR(models);
  auto gpt2 = SafetensorsFile::Open(models + "/tiny-gpt2-cicd/model.safetensors");
  ASSERT_TRUE(gpt2.ok()) << gpt2.status().ToString();
  EXPECT_EQ(gpt2->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  // tiny-llama3-bf16 has "__metadata__": null.
  auto llama = SafetensorsFile::Open(models + "/tiny-llama3-bf16/model.safetensors");
  ASSERT_TRUE(llama.ok()) << llama.status().ToString();
  EXPECT_TRUE(llama->metadata().empty());
  EXPECT_EQ(llama->data_offset() % 8, 2u);  // 8 + 2122: unaligned data section
}

TEST(RealCheckpoints, LlamaShardedIndexEqualsSingleFile) {
  SW_REQUIRE_MODELS_DIR(models);
  const std::string dir = models + "/tiny-llama-f32-sharded";
  auto sharded = Checkpoint::Open(dir + "/tiny_llama.safetensors.index.json");
  ASSERT_TRUE(sharded.ok()) << sharded.status().ToString();
  auto single = Checkpoint::Open(dir + "/tiny_llama.safetensors");
  ASSERT_TRUE(single.ok()) << single.status().ToString();
  EXPECT_EQ(sharded->files().size(), 2u);
  EXPECT_EQ(single->files().size(), 1u);
  EXPECT_EQ(sharded->tensors().size(), 22u);
  EXPECT_EQ(sharded->total_bytes(), 4712u);  // index metadata.total_size
  EXPECT_EQ(sharded->tensors(), single->tensors());
  for (const auto& spec : single->tensors()) {
    auto a = sharded->Get(spec.name);
    auto b = single->Get(spec.name);
    ASSERT_TRUE(a.ok() && b.ok()) << spec.name;
    EXPECT_EQ(Fnv1a64(a->data), Fnv1a64(b->data)) << spec.name;
  }
  EXPECT_TRUE(sharded->Contains("model.layers.0.self_attn.rotary_emb.inv_freq"));
}

TEST(RealCheckpoints, MlxInterleavedShardsResolveToTheRightFile) {
  SW_REQUIRE_MODELS_DIR(models);
  const std::string dir = models + "/tiny-qwen3-sharded-mlx4bit";
  auto cp = Checkpoint::Open(dir + "/model.safetensors.index.json");
  ASSERT_TRUE(cp.ok()) << cp.status().ToString();
  EXPECT_EQ(cp->tensors().size(), 57u);
  EXPECT_EQ(cp->total_bytes(), 40384u + 40256u);
  auto hashes = OracleHashes(dir + "/model-00001-of-00002.safetensors");
  const auto second = OracleHashes(dir + "/model-00002-of-00002.safetensors");
  hashes.insert(second.begin(), second.end());
  ASSERT_EQ(hashes.size(), 57u);
  std::map<DType, int> dtypes;
  for (const auto& spec : cp->tensors()) {
    auto view = cp->Get(spec.name);
    ASSERT_TRUE(view.ok()) << view.status().ToString();
    EXPECT_EQ(Hex16(Fnv1a64(view->data)), hashes[spec.name]) << spec.name;
    ++dtypes[spec.dtype];
  }
  EXPECT_EQ(dtypes[DType::kU32], 16);
  EXPECT_EQ(dtypes[DType::kF32], 32);
  EXPECT_EQ(dtypes[DType::kBF16], 9);
  // Interleaved: lm_head.weight and lm_head.scales live in different shards.
  EXPECT_EQ(cp->Get("lm_head.weight")->data.data(),
            cp->files()[0].Get("lm_head.weight")->data.data());
  EXPECT_EQ(cp->Get("lm_head.scales")->data.data(),
            cp->files()[1].Get("lm_head.scales")->data.data());
  EXPECT_TRUE(cp->files()[0].Contains("lm_head.weight"));
  EXPECT_FALSE(cp->files()[0].Contains("lm_head.scales"));
  EXPECT_TRUE(cp->files()[1].Contains("lm_head.scales"));
}

TEST(RealCheckpoints, DirectoriesOpenAndFindTheirConfig) {
  SW_REQUIRE_MODELS_DIR(models);
  struct Case {
    const char* dir;
    const char* opened;  // file name Checkpoint resolves the directory to
    const char* config;
    std::size_t tensors;
  };
  const Case cases[] = {
      {"tiny-llama-f32-sharded", "tiny_llama.safetensors.index.json", "tiny_llama_config.json", 22},
      {"tiny-llama3-bf16", "model.safetensors", "config.json", 21},
      {"tiny-qwen3-bf16", "model.safetensors", "config.json", 25},
      {"tiny-qwen3-sharded-mlx4bit", "model.safetensors.index.json", "config.json", 57},
      {"tiny-qwen2-f32", "tiny_qwen2.safetensors", "tiny_qwen2_config.json", 27},
      {"tiny-qwen3-f32", "tiny_qwen3.safetensors", "tiny_qwen3_config.json", 25},
      {"tiny-mistral-f32", "tiny_mistral.safetensors", "tiny_mistral_config.json", 21},
      {"tiny-mixtral-f32", "tiny_mixtral.safetensors", "tiny_mixtral_config.json", 41},
      {"tiny-qwen3-moe-f32", "tiny_qwen3_moe.safetensors", "tiny_qwen3_moe_config.json", 45},
      {"tiny-deepseek-v2-f32", "tiny_deepseek_v2.safetensors", "tiny_deepseek_v2_config.json", 36},
      {"tiny-gpt2-cicd", "model.safetensors", "config.json", 16},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.dir);
    const std::string dir = models + "/" + c.dir;
    auto cp = Checkpoint::Open(dir);
    ASSERT_TRUE(cp.ok()) << cp.status().ToString();
    EXPECT_EQ(cp->path(), dir + "/" + c.opened);
    EXPECT_EQ(cp->config_path(), dir + "/" + c.config);
    EXPECT_EQ(cp->tensors().size(), c.tensors);
  }
}

}  // namespace
}  // namespace shardwire
