// The rules-driven DescribeModel (models/rules/*.yaml) gives exactly the description the
// former C++ family code gave, for every shared model config and variants of them that
// exercise every option (biases, tied embeddings, FP8 blocks, q_lora_rank null, MTP
// layers, MoE placement rules, dtypes). The reference is a digest (FNV-1a 64 of a
// canonical dump of every tensor's name, dtype, shape, role, layer, expert,
// shared_expert, scale_of and of every fused parameter) recorded from the C++ code
// (commit "Model: rules engine ..." on wip/rules) before it was deleted.
#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "model/test_util.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"

namespace shardwire {
namespace {

std::string Canonical(const ModelDescription& d) {
  std::string s;
  for (const auto& t : d.tensors) {
    s += fmt::format("{} {} [{}] {} {} {} {} {}\n", t.spec.name, DTypeName(t.spec.dtype), fmt::join(t.spec.shape, ","),
                     ParallelRoleName(t.role), t.layer, t.expert, t.shared_expert ? 1 : 0, t.scale_of);
  }
  for (const auto& f : d.fused) s += fmt::format("fused {} = {}\n", f.name, fmt::join(f.parts, " "));
  return s;
}

std::uint64_t Fnv1a(const std::string& s) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

struct Case {
  std::string name;
  ModelConfig config;
};

std::vector<Case> Cases(const std::string& models) {
  const std::pair<const char*, const char*> files[] = {
      {"tiny-llama3-bf16", "config.json"},
      {"tiny-llama-f32-sharded", "tiny_llama_config.json"},
      {"tiny-qwen3-bf16", "config.json"},
      {"tiny-qwen3-f32", "tiny_qwen3_config.json"},
      {"tiny-qwen2-f32", "tiny_qwen2_config.json"},
      {"tiny-mistral-f32", "tiny_mistral_config.json"},
      {"tiny-qwen3-moe-f32", "tiny_qwen3_moe_config.json"},
      {"tiny-mixtral-f32", "tiny_mixtral_config.json"},
      {"tiny-deepseek-v2-f32", "tiny_deepseek_v2_config.json"},
      {"tiny-qwen3-sharded-mlx4bit", "config.json"},
      {"Llama-3.1-8B", "config.json"},
      {"Llama-3.3-70B-Instruct", "config.json"},
      {"Qwen3-30B-A3B", "config.json"},
      {"DeepSeek-V3", "config.json"},
      {"Kimi-K2-Instruct", "config.json"},
  };
  std::vector<Case> out;
  for (const auto& [dir, file] : files) {
    auto c = LoadModelConfig(models + "/" + dir + "/" + file);
    EXPECT_TRUE(c.ok()) << dir << ": " << c.status().ToString();
    if (!c.ok()) continue;
    out.push_back({dir, *c});
    // Variants exercising each option of each family.
    ModelConfig v = *c;
    v.tie_word_embeddings = !v.tie_word_embeddings;
    v.attention_bias = !v.attention_bias;
    v.mlp_bias = !v.mlp_bias;
    v.torch_dtype = DType::kF16;
    out.push_back({std::string(dir) + "+flags", v});
    v = *c;
    if (v.fp8_block_size.has_value()) {
      v.quant_method.clear();
      v.fp8_block_size.reset();
    } else {
      v.quant_method = "fp8";
      v.fp8_block_size = std::array<std::int64_t, 2>{128, 64};
    }
    out.push_back({std::string(dir) + "+fp8toggle", v});
    if (v.num_experts.has_value()) {
      v = *c;
      v.num_hidden_layers = std::min<std::int64_t>(v.num_hidden_layers, 6);
      v.decoder_sparse_step = 2;
      v.mlp_only_layers = {3};
      v.moe_layer_freq = 2;
      v.first_k_dense_replace = 1;
      v.n_shared_experts = v.n_shared_experts.has_value() ? std::optional<std::int64_t>() : 2;
      v.num_nextn_predict_layers = 2;
      v.q_lora_rank = v.q_lora_rank.has_value() ? std::optional<std::int64_t>() : 24;
      out.push_back({std::string(dir) + "+moe", v});
    }
  }
  return out;
}

// Digests recorded from the C++ family code (see the file comment).
const std::map<std::string, std::string>& Golden() {
  static const std::map<std::string, std::string> golden = {
#include "rules_golden.inc"
  };
  return golden;
}

TEST(RulesEquivalence, RulesDescribeExactlyWhatTheCppFamiliesDescribed) {
  SW_REQUIRE_MODELS_DIR(models);
  const auto cases = Cases(models);
  ASSERT_GE(cases.size(), 50u);
  std::string record;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto d = DescribeModel(c.config);
    std::string digest = d.ok() ? fmt::format("{:016x} {}", Fnv1a(Canonical(*d)), d->tensors.size())
                                : fmt::format("error {}", ErrorCodeName(d.status().code()));
    record += fmt::format("    {{\"{}\", \"{}\"}},\n", c.name, digest);
    const auto it = Golden().find(c.name);
    ASSERT_NE(it, Golden().end()) << "no golden digest for " << c.name;
    EXPECT_EQ(digest, it->second) << (d.ok() ? "" : d.status().ToString());
  }
  if (const char* out = std::getenv("SHARDWIRE_WRITE_RULES_GOLDEN")) {
    testing::WriteBytes(out, record);
  }
}

}  // namespace
}  // namespace shardwire
