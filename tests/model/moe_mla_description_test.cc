// DescribeModel for mixture-of-experts (qwen3_moe, mixtral), multi-head latent attention
// (deepseek_v2/v3, kimi_k2) and FP8 block-quantised models, and the fused parameters.
// Expected counts are hand-written arithmetic from the config numbers, not calls into the
// code under test.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "model/test_util.h"
#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/model_description.h"

namespace shardwire {
namespace {

using Shape = std::vector<std::int64_t>;
using R = ParallelRole;

ModelConfig MustLoad(const std::string& path) {
  auto c = LoadModelConfig(path);
  EXPECT_TRUE(c.ok()) << path << ": " << c.status().ToString();
  return c.ok() ? *c : ModelConfig{};
}

ModelDescription MustDescribe(const ModelConfig& c) {
  auto d = DescribeModel(c);
  EXPECT_TRUE(d.ok()) << c.model_type << ": " << d.status().ToString();
  return d.ok() ? *d : ModelDescription{};
}

// Name -> tensor, built once (Find is a linear scan).
std::map<std::string, const ModelTensor*> Index(const ModelDescription& d) {
  std::map<std::string, const ModelTensor*> m;
  for (const auto& t : d.tensors) m.emplace(t.spec.name, &t);
  return m;
}

struct Expect {
  std::string name;
  DType dtype;
  Shape shape;
  ParallelRole role;
  int layer;
  int expert = -1;
  bool shared = false;
};

void CheckTensors(const ModelDescription& d, const std::vector<Expect>& expects) {
  const auto index = Index(d);
  for (const auto& e : expects) {
    SCOPED_TRACE(e.name);
    const auto it = index.find(e.name);
    ASSERT_NE(it, index.end());
    const ModelTensor& t = *it->second;
    EXPECT_EQ(t.spec.dtype, e.dtype);
    EXPECT_EQ(t.spec.shape, e.shape);
    EXPECT_EQ(t.role, e.role);
    EXPECT_EQ(t.layer, e.layer);
    EXPECT_EQ(t.expert, e.expert);
    EXPECT_EQ(t.shared_expert, e.shared);
  }
}

// Invariants every description must satisfy: unique names; every fused part exists, parts
// agree on dtype, role, rank and trailing dims; every scale follows the FP8 weight it
// scales and has its role / layer / expert; every F8 weight has a scale.
void CheckInvariants(const ModelDescription& d) {
  const auto index = Index(d);
  ASSERT_EQ(index.size(), d.tensors.size()) << "duplicate tensor names";
  std::set<std::string> fused_names;
  for (const auto& f : d.fused) {
    SCOPED_TRACE(f.name);
    EXPECT_TRUE(fused_names.insert(f.name).second) << "duplicate fused name";
    EXPECT_FALSE(index.contains(f.name)) << "fused name collides with a checkpoint tensor";
    ASSERT_GE(f.parts.size(), 2u);
    const ModelTensor* first = nullptr;
    for (const auto& part : f.parts) {
      const auto it = index.find(part);
      ASSERT_NE(it, index.end()) << part;
      const ModelTensor* t = it->second;
      if (first == nullptr) {
        first = t;
        continue;
      }
      EXPECT_EQ(t->spec.dtype, first->spec.dtype) << part;
      EXPECT_EQ(t->role, first->role) << part;
      EXPECT_EQ(t->layer, first->layer) << part;
      EXPECT_EQ(t->expert, first->expert) << part;
      ASSERT_EQ(t->spec.shape.size(), first->spec.shape.size()) << part;
      for (std::size_t k = 1; k < t->spec.shape.size(); ++k) {
        EXPECT_EQ(t->spec.shape[k], first->spec.shape[k]) << part;
      }
    }
  }
  for (std::size_t i = 0; i < d.tensors.size(); ++i) {
    const ModelTensor& t = d.tensors[i];
    const bool is_scale = t.spec.name.ends_with(".weight_scale_inv");
    EXPECT_EQ(is_scale, !t.scale_of.empty()) << t.spec.name;
    if (t.spec.dtype == DType::kF8E4M3) {
      ASSERT_LT(i + 1, d.tensors.size());
      EXPECT_EQ(d.tensors[i + 1].scale_of, t.spec.name);
    }
    if (!is_scale) continue;
    ASSERT_GT(i, 0u);
    const ModelTensor& w = d.tensors[i - 1];
    EXPECT_EQ(w.spec.name, t.scale_of);
    EXPECT_EQ(t.spec.name, t.scale_of + "_scale_inv");
    EXPECT_EQ(w.spec.dtype, DType::kF8E4M3) << w.spec.name;
    EXPECT_EQ(t.spec.dtype, DType::kF32);
    EXPECT_EQ(t.role, w.role);
    EXPECT_EQ(t.layer, w.layer);
    EXPECT_EQ(t.expert, w.expert);
    EXPECT_EQ(t.shared_expert, w.shared_expert);
  }
}

// Sum of dim 0 of a fused parameter's parts.
std::int64_t FusedRows(const ModelDescription& d, const FusedParameter& f) {
  const auto index = Index(d);
  std::int64_t rows = 0;
  for (const auto& p : f.parts) rows += index.at(p)->spec.shape.at(0);
  return rows;
}

const FusedParameter* FindFused(const ModelDescription& d, const std::string& name) {
  for (const auto& f : d.fused) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

std::uint64_t NonScaleParams(const ModelDescription& d) {
  std::uint64_t n = 0;
  for (const auto& t : d.tensors) {
    if (t.scale_of.empty()) n += static_cast<std::uint64_t>(t.spec.numel());
  }
  return n;
}

std::size_t ExpertWeights(const ModelDescription& d) {
  std::size_t n = 0;
  for (const auto& t : d.tensors) n += t.expert >= 0 && t.scale_of.empty();
  return n;
}

// ---- tiny real checkpoints ------------------------------------------------------------


TEST(DescribeMoe, TinyCheckpointsMatchExactly) {
  SW_REQUIRE_MODELS_DIR(models);
  struct Case {
    const char* dir;
    std::size_t tensors;  // = the checkpoint's tensor count (SOURCES.md)
    std::size_t expert_tensors;
    std::size_t fused;
  };
  const Case cases[] = {
      // 2 layers x 4 experts x 3; fused: 2 qkv + 8 expert gate_up.
      {"tiny-qwen3-moe-f32", 45, 24, 10},
      {"tiny-mixtral-f32", 41, 24, 10},
      // layer 1 only: 4 experts x 3; fused: 2 dense/shared gate_up + 4 expert gate_up.
      {"tiny-deepseek-v2-f32", 36, 12, 6},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.dir);
    const testing::LoadedModel l = testing::LoadRealModel(models, c.dir);
    EXPECT_EQ(l.description.tensors.size(), c.tensors);
    EXPECT_EQ(l.checkpoint_tensors.size(), c.tensors);
    EXPECT_EQ(ExpertWeights(l.description), c.expert_tensors);
    EXPECT_EQ(l.description.fused.size(), c.fused);
    const Status s = CheckCheckpointMatchesModel(l.description, l.checkpoint_tensors, c.dir);
    EXPECT_TRUE(s.ok()) << s.ToString();
    CheckInvariants(l.description);
  }
}

TEST(DescribeMoe, TinyQwen3MoeShapesAndRoles) {
  SW_REQUIRE_MODELS_DIR(models);
  const testing::LoadedModel l = testing::LoadRealModel(models, "tiny-qwen3-moe-f32");
  const DType f = DType::kF32;
  CheckTensors(l.description,
               {
                   {"model.layers.0.mlp.gate.weight", f, {4, 8}, R::kReplicated, 0},
                   {"model.layers.1.mlp.experts.3.down_proj.weight", f, {8, 5}, R::kRow, 1, 3},
                   {"model.layers.1.mlp.experts.2.gate_proj.weight", f, {5, 8}, R::kColumn, 1, 2},
                   {"model.layers.0.mlp.experts.0.up_proj.weight", f, {5, 8}, R::kColumn, 0, 0},
                   {"model.layers.1.self_attn.q_norm.weight", f, {6}, R::kReplicated, 1},
                   {"model.layers.1.self_attn.q_proj.weight", f, {12, 8}, R::kColumn, 1},
                   {"model.layers.1.self_attn.o_proj.weight", f, {8, 12}, R::kRow, 1},
                   {"lm_head.weight", f, {13, 8}, R::kVocab, -1},
               });
  EXPECT_EQ(l.description.Find("model.layers.0.mlp.gate_proj.weight"), nullptr);
  const FusedParameter* qkv = FindFused(l.description, "model.layers.1.self_attn.qkv_proj.weight");
  ASSERT_NE(qkv, nullptr);
  EXPECT_EQ(qkv->parts, (std::vector<std::string>{"model.layers.1.self_attn.q_proj.weight",
                                                  "model.layers.1.self_attn.k_proj.weight",
                                                  "model.layers.1.self_attn.v_proj.weight"}));
  EXPECT_EQ(FusedRows(l.description, *qkv), (2 + 2 * 1) * 6);  // (heads + 2 kv_heads) * head_dim
  const FusedParameter* w13 =
      FindFused(l.description, "model.layers.0.mlp.experts.3.gate_up_proj.weight");
  ASSERT_NE(w13, nullptr);
  EXPECT_EQ(w13->parts, (std::vector<std::string>{"model.layers.0.mlp.experts.3.gate_proj.weight",
                                                  "model.layers.0.mlp.experts.3.up_proj.weight"}));
  EXPECT_EQ(FusedRows(l.description, *w13), 2 * 5);
}

TEST(DescribeMoe, TinyMixtralLegacyNames) {
  SW_REQUIRE_MODELS_DIR(models);
  const testing::LoadedModel l = testing::LoadRealModel(models, "tiny-mixtral-f32");
  const DType f = DType::kF32;
  const std::string p = "model.layers.1.block_sparse_moe.";
  CheckTensors(l.description,
               {
                   {p + "gate.weight", f, {4, 8}, R::kReplicated, 1},
                   {p + "experts.1.w1.weight", f, {12, 8}, R::kColumn, 1, 1},
                   {p + "experts.1.w3.weight", f, {12, 8}, R::kColumn, 1, 1},
                   {p + "experts.1.w2.weight", f, {8, 12}, R::kRow, 1, 1},
                   {"model.layers.0.self_attn.k_proj.weight", f, {4, 8}, R::kColumn, 0},
               });
  const FusedParameter* w13 = FindFused(l.description, p + "experts.2.gate_up_proj.weight");
  ASSERT_NE(w13, nullptr);
  EXPECT_EQ(w13->parts, (std::vector<std::string>{p + "experts.2.w1.weight", p + "experts.2.w3.weight"}));
  EXPECT_EQ(FusedRows(l.description, *w13), 24);
}

TEST(DescribeMla, TinyDeepseekV2ShapesAndRoles) {
  SW_REQUIRE_MODELS_DIR(models);
  const testing::LoadedModel l = testing::LoadRealModel(models, "tiny-deepseek-v2-f32");
  const DType f = DType::kF32;
  // heads 2, nope 6, rope 4, v 6, kv_lora 5, q_lora null, moe_inter 5, 2 shared experts.
  CheckTensors(l.description,
               {
                   {"model.layers.0.self_attn.q_proj.weight", f, {2 * (6 + 4), 8}, R::kColumn, 0},
                   {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight", f, {5 + 4, 8}, R::kReplicated, 0},
                   {"model.layers.0.self_attn.kv_a_layernorm.weight", f, {5}, R::kReplicated, 0},
                   {"model.layers.0.self_attn.kv_b_proj.weight", f, {2 * (6 + 6), 5}, R::kColumn, 0},
                   {"model.layers.0.self_attn.o_proj.weight", f, {8, 2 * 6}, R::kRow, 0},
                   {"model.layers.0.mlp.gate_proj.weight", f, {12, 8}, R::kColumn, 0},  // dense
                   {"model.layers.0.mlp.down_proj.weight", f, {8, 12}, R::kRow, 0},
                   {"model.layers.1.mlp.gate.weight", f, {4, 8}, R::kReplicated, 1},
                   {"model.layers.1.mlp.experts.3.up_proj.weight", f, {5, 8}, R::kColumn, 1, 3},
                   {"model.layers.1.mlp.experts.0.down_proj.weight", f, {8, 5}, R::kRow, 1, 0},
                   {"model.layers.1.mlp.shared_experts.gate_proj.weight", f, {10, 8}, R::kColumn, 1, -1, true},
                   {"model.layers.1.mlp.shared_experts.down_proj.weight", f, {8, 10}, R::kRow, 1, -1, true},
               });
  const ModelDescription& d = l.description;
  EXPECT_EQ(d.Find("model.layers.1.mlp.gate.e_score_correction_bias"), nullptr);  // V3 only
  EXPECT_EQ(d.Find("model.layers.1.mlp.gate_proj.weight"), nullptr);
  EXPECT_EQ(FindFused(d, "model.layers.0.self_attn.fused_qkv_a_proj_with_mqa.weight"), nullptr);
  EXPECT_EQ(FindFused(d, "model.layers.0.self_attn.qkv_proj.weight"), nullptr);
  const FusedParameter* shared = FindFused(d, "model.layers.1.mlp.shared_experts.gate_up_proj.weight");
  ASSERT_NE(shared, nullptr);
  EXPECT_EQ(FusedRows(d, *shared), 2 * 10);
  ASSERT_NE(FindFused(d, "model.layers.0.mlp.gate_up_proj.weight"), nullptr);
}

// ---- big real configs -----------------------------------------------------------------

TEST(DescribeMoe, Qwen3_30B_A3B) {
  SW_REQUIRE_MODELS_DIR(models);
  const ModelConfig c = MustLoad(models + "/Qwen3-30B-A3B/config.json");
  const ModelDescription d = MustDescribe(c);
  // hidden 2048, 48 layers, 32 q heads / 4 kv heads of 128, 128 experts of 768, vocab 151936.
  const std::uint64_t attn = 4096ull * 2048 + 2 * 512ull * 2048 + 2048ull * 4096 + 2 * 128;
  const std::uint64_t moe = 128ull * 3 * 768 * 2048 + 128ull * 2048;  // experts + router
  const std::uint64_t layer = attn + moe + 2 * 2048;                   // + 2 norms
  const std::uint64_t expected = 48 * layer + 2 * 151936ull * 2048 + 2048;
  EXPECT_EQ(expected, 30'532'122'624u);
  EXPECT_EQ(d.total_params(), expected);
  EXPECT_NEAR(static_cast<double>(d.total_params()), 30.5e9, 0.05e9);
  EXPECT_EQ(d.total_bytes(), 2 * expected);  // all BF16
  EXPECT_EQ(ExpertWeights(d), 128u * 48 * 3);
  // 48 x (2 norms + 4 attention + q/k norm + router + 384 experts) + embed, norm, lm_head.
  EXPECT_EQ(d.tensors.size(), 48u * (2 + 4 + 2 + 1 + 384) + 3);
  EXPECT_EQ(d.fused.size(), 48u * (1 + 128));  // qkv + per-expert gate_up
  CheckTensors(d, {
                      {"model.layers.47.mlp.experts.127.down_proj.weight", DType::kBF16, {2048, 768}, R::kRow, 47, 127},
                      {"model.layers.0.mlp.gate.weight", DType::kBF16, {128, 2048}, R::kReplicated, 0},
                      {"model.layers.5.self_attn.k_proj.weight", DType::kBF16, {512, 2048}, R::kColumn, 5},
                  });
  const FusedParameter* qkv = FindFused(d, "model.layers.7.self_attn.qkv_proj.weight");
  ASSERT_NE(qkv, nullptr);
  EXPECT_EQ(qkv->parts.front(), "model.layers.7.self_attn.q_proj.weight");
  EXPECT_EQ(qkv->parts.back(), "model.layers.7.self_attn.v_proj.weight");
  EXPECT_EQ(FusedRows(d, *qkv), (32 + 2 * 4) * 128);
  CheckInvariants(d);
}

TEST(DescribeMoe, Qwen3MoeDenseLayersFromSparseStepAndMlpOnlyLayers) {
  SW_REQUIRE_MODELS_DIR(models);
  ModelConfig c = MustLoad(models + "/Qwen3-30B-A3B/config.json");
  c.num_hidden_layers = 4;
  c.decoder_sparse_step = 2;  // MoE when (layer + 1) % 2 == 0: layers 1, 3
  c.mlp_only_layers = {3};    // ... but layer 3 is dense
  const ModelDescription d = MustDescribe(c);
  for (int i = 0; i < 4; ++i) {
    SCOPED_TRACE(i);
    const std::string p = "model.layers." + std::to_string(i) + ".mlp.";
    const bool moe = i == 1;
    EXPECT_EQ(d.Find(p + "gate.weight") != nullptr, moe);
    EXPECT_EQ(d.Find(p + "experts.0.gate_proj.weight") != nullptr, moe);
    const ModelTensor* dense = d.Find(p + "gate_proj.weight");
    ASSERT_EQ(dense != nullptr, !moe);
    if (dense != nullptr) {
      EXPECT_EQ(dense->spec.shape, (Shape{6144, 2048}));  // intermediate_size
    }
  }
  c.moe_intermediate_size.reset();
  EXPECT_EQ(DescribeModel(c).status().code(), ErrorCode::kInvalidArgument);
  c.mlp_only_layers = {1, 3};  // no MoE layer left: moe_intermediate_size not needed
  EXPECT_TRUE(DescribeModel(c).ok());
}

// DeepSeek-V3 hand arithmetic (config numbers): hidden 7168, 128 heads, nope 128, rope 64,
// v 128, q_lora 1536, kv_lora 512, inter 18432, moe_inter 2048, 256 + 1 experts, vocab
// 129280, 61 layers of which 3 dense, 1 MTP layer.
struct MlaNumbers {
  std::uint64_t hidden, heads, experts, vocab, layers, dense_layers, mtp;
  std::uint64_t attn() const {
    return 1536 * hidden + 1536 + heads * 192 * 1536 + 576 * hidden + 512 + heads * 256 * 512 +
           hidden * heads * 128;
  }
  std::uint64_t dense_layer() const { return attn() + 2 * hidden + 3 * hidden * 18432; }
  std::uint64_t moe_layer() const {
    return attn() + 2 * hidden + (experts + 1) * 3 * hidden * 2048 + experts * hidden + experts;
  }
  std::uint64_t main() const {
    return dense_layers * dense_layer() + (layers - dense_layers) * moe_layer() +
           2 * vocab * hidden + hidden;
  }
  // embed copy, enorm, hnorm, eh_proj, decoder layer, shared_head norm + head.
  std::uint64_t mtp_params() const {
    return mtp * (vocab * hidden + 2 * hidden + hidden * 2 * hidden + moe_layer() + hidden +
                  vocab * hidden);
  }
};

TEST(DescribeMla, DeepSeekV3) {
  SW_REQUIRE_MODELS_DIR(models);
  const ModelConfig c = MustLoad(models + "/DeepSeek-V3/config.json");
  EXPECT_EQ(c.quant_method, "fp8");
  ASSERT_TRUE(c.fp8_block_size.has_value());
  EXPECT_EQ(*c.fp8_block_size, (std::array<std::int64_t, 2>{128, 128}));
  EXPECT_EQ(c.num_nextn_predict_layers, 1);
  EXPECT_EQ(c.moe_layer_freq, 1);

  const auto t0 = std::chrono::steady_clock::now();
  const ModelDescription d = MustDescribe(c);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("DeepSeek-V3: %zu tensors, %zu fused, described in %.1f ms\n", d.tensors.size(),
              d.fused.size(), ms);

  const MlaNumbers n{7168, 128, 256, 129280, 61, 3, 1};
  EXPECT_NEAR(static_cast<double>(n.main()), 671e9, 0.01 * 671e9);
  EXPECT_EQ(n.main() + n.mtp_params(), NonScaleParams(d));
  // HF: 671B main + 14B MTP = 685B; scales add ~0.04B.
  EXPECT_NEAR(static_cast<double>(d.total_params()), 685e9, 0.01 * 685e9);
  EXPECT_GT(d.total_params(), NonScaleParams(d));

  EXPECT_EQ(ExpertWeights(d), 58u * 256 * 3 + 256u * 3);
  // Per layer: 2 norms + 2 MLA norms + 5 projections x (weight, scale) = 14; dense MLP 6;
  // MoE: router + bias + 257 experts x 6.
  const std::size_t dense = 14 + 6, moe = 14 + 2 + 257 * 6;
  EXPECT_EQ(d.tensors.size(), 1 + 3 * dense + 58 * moe + 2 + (6 + moe));

  const DType f8 = DType::kF8E4M3, f32 = DType::kF32, bf = DType::kBF16;
  const std::string a = "model.layers.5.self_attn.";
  CheckTensors(d, {
      {"model.embed_tokens.weight", bf, {129280, 7168}, R::kVocab, -1},
      {"lm_head.weight", bf, {129280, 7168}, R::kVocab, -1},
      {a + "q_a_proj.weight", f8, {1536, 7168}, R::kReplicated, 5},
      {a + "q_a_proj.weight_scale_inv", f32, {12, 56}, R::kReplicated, 5},
      {a + "q_a_layernorm.weight", bf, {1536}, R::kReplicated, 5},
      {a + "q_b_proj.weight", f8, {128 * 192, 1536}, R::kColumn, 5},
      {a + "q_b_proj.weight_scale_inv", f32, {192, 12}, R::kColumn, 5},
      {a + "kv_a_proj_with_mqa.weight", f8, {576, 7168}, R::kReplicated, 5},
      {a + "kv_a_proj_with_mqa.weight_scale_inv", f32, {5, 56}, R::kReplicated, 5},  // ceil(576/128)
      {a + "kv_a_layernorm.weight", bf, {512}, R::kReplicated, 5},
      {a + "kv_b_proj.weight", f8, {128 * 256, 512}, R::kColumn, 5},
      {a + "kv_b_proj.weight_scale_inv", f32, {256, 4}, R::kColumn, 5},
      {a + "o_proj.weight", f8, {7168, 128 * 128}, R::kRow, 5},
      {a + "o_proj.weight_scale_inv", f32, {56, 128}, R::kRow, 5},
      {"model.layers.2.mlp.gate_proj.weight", f8, {18432, 7168}, R::kColumn, 2},
      {"model.layers.2.mlp.gate_proj.weight_scale_inv", f32, {144, 56}, R::kColumn, 2},
      {"model.layers.3.mlp.gate.weight", bf, {256, 7168}, R::kReplicated, 3},
      {"model.layers.3.mlp.gate.e_score_correction_bias", f32, {256}, R::kReplicated, 3},
      {"model.layers.60.mlp.experts.255.down_proj.weight", f8, {7168, 2048}, R::kRow, 60, 255},
      {"model.layers.60.mlp.experts.255.down_proj.weight_scale_inv", f32, {56, 16}, R::kRow, 60, 255},
      {"model.layers.60.mlp.experts.0.up_proj.weight", f8, {2048, 7168}, R::kColumn, 60, 0},
      {"model.layers.4.mlp.shared_experts.gate_proj.weight", f8, {2048, 7168}, R::kColumn, 4, -1, true},
      {"model.layers.4.mlp.shared_experts.gate_proj.weight_scale_inv", f32, {16, 56}, R::kColumn, 4, -1, true},
      // MTP module = layer 61.
      {"model.layers.61.embed_tokens.weight", bf, {129280, 7168}, R::kVocab, 61},
      {"model.layers.61.enorm.weight", bf, {7168}, R::kReplicated, 61},
      {"model.layers.61.hnorm.weight", bf, {7168}, R::kReplicated, 61},
      {"model.layers.61.eh_proj.weight", bf, {7168, 2 * 7168}, R::kReplicated, 61},
      {"model.layers.61.self_attn.kv_b_proj.weight", f8, {128 * 256, 512}, R::kColumn, 61},
      {"model.layers.61.mlp.experts.17.gate_proj.weight", f8, {2048, 7168}, R::kColumn, 61, 17},
      {"model.layers.61.mlp.shared_experts.down_proj.weight", f8, {7168, 2048}, R::kRow, 61, -1, true},
      {"model.layers.61.shared_head.norm.weight", bf, {7168}, R::kReplicated, 61},
      {"model.layers.61.shared_head.head.weight", bf, {129280, 7168}, R::kVocab, 61},
  });
  const auto index = Index(d);
  EXPECT_FALSE(index.contains("model.layers.61.eh_proj.weight_scale_inv"));
  EXPECT_FALSE(index.contains("model.layers.3.mlp.gate.weight_scale_inv"));
  EXPECT_FALSE(index.contains("model.layers.2.mlp.gate.weight"));  // dense layer
  EXPECT_FALSE(index.contains("model.layers.62.input_layernorm.weight"));
  EXPECT_EQ(index.at("model.layers.60.mlp.experts.255.down_proj.weight_scale_inv")->scale_of,
            "model.layers.60.mlp.experts.255.down_proj.weight");

  // Fused: MLA a-projections, dense gate_up, experts w13, shared gate_up, with scales.
  const FusedParameter* qkv_a = FindFused(d, a + "fused_qkv_a_proj_with_mqa.weight");
  ASSERT_NE(qkv_a, nullptr);
  EXPECT_EQ(qkv_a->parts, (std::vector<std::string>{a + "q_a_proj.weight", a + "kv_a_proj_with_mqa.weight"}));
  EXPECT_EQ(FusedRows(d, *qkv_a), 1536 + 512 + 64);
  const FusedParameter* qkv_a_s = FindFused(d, a + "fused_qkv_a_proj_with_mqa.weight_scale_inv");
  ASSERT_NE(qkv_a_s, nullptr);
  EXPECT_EQ(qkv_a_s->parts, (std::vector<std::string>{a + "q_a_proj.weight_scale_inv",
                                                      a + "kv_a_proj_with_mqa.weight_scale_inv"}));
  EXPECT_EQ(FusedRows(d, *qkv_a_s), 12 + 5);
  const FusedParameter* w13 = FindFused(d, "model.layers.61.mlp.experts.9.gate_up_proj.weight_scale_inv");
  ASSERT_NE(w13, nullptr);
  EXPECT_EQ(FusedRows(d, *w13), 2 * 16);
  ASSERT_NE(FindFused(d, "model.layers.0.mlp.gate_up_proj.weight"), nullptr);
  ASSERT_NE(FindFused(d, "model.layers.3.mlp.shared_experts.gate_up_proj.weight"), nullptr);
  // Per layer: MLA a (x2), dense gate_up (x2) or 257 gate_up (x2).
  EXPECT_EQ(d.fused.size(), 3u * 4 + 59u * (2 + 257 * 2));
  CheckInvariants(d);
}

TEST(DescribeMla, KimiK2) {
  SW_REQUIRE_MODELS_DIR(models);
  const ModelConfig c = MustLoad(models + "/Kimi-K2-Instruct/config.json");
  const ModelDescription d = MustDescribe(c);
  ASSERT_FALSE(d.tensors.empty());
  const MlaNumbers n{7168, 64, 384, 163840, 61, 1, 0};
  EXPECT_EQ(NonScaleParams(d), n.main());
  EXPECT_NEAR(static_cast<double>(d.total_params()), 1.026e12, 0.02 * 1.026e12);
  EXPECT_EQ(ExpertWeights(d), 60u * 384 * 3);
  EXPECT_EQ(d.Find("model.layers.61.enorm.weight"), nullptr);  // no MTP layer
  ASSERT_NE(d.Find("model.layers.60.mlp.experts.383.gate_proj.weight"), nullptr);
  EXPECT_EQ(d.Find("model.layers.0.mlp.gate.weight"), nullptr);  // first_k_dense_replace 1
  CheckTensors(d, {
      {"model.layers.0.mlp.up_proj.weight", DType::kF8E4M3, {18432, 7168}, R::kColumn, 0},
      {"model.layers.1.mlp.gate.weight", DType::kBF16, {384, 7168}, R::kReplicated, 1},
      {"model.layers.1.self_attn.q_b_proj.weight", DType::kF8E4M3, {64 * 192, 1536}, R::kColumn, 1},
      {"model.layers.1.self_attn.o_proj.weight_scale_inv", DType::kF32, {56, 64}, R::kRow, 1},
      {"model.layers.30.mlp.experts.383.down_proj.weight", DType::kF8E4M3, {7168, 2048}, R::kRow, 30, 383},
  });
  CheckInvariants(d);
}

TEST(DescribeMla, WithLayersKeepsMtpAfterMainLayers) {
  SW_REQUIRE_MODELS_DIR(models);
  const ModelDescription full = MustDescribe(MustLoad(models + "/DeepSeek-V3/config.json"));
  auto five = WithLayers(full, 5);
  ASSERT_TRUE(five.ok()) << five.status().ToString();
  EXPECT_NE(five->Find("model.layers.4.mlp.experts.0.gate_proj.weight"), nullptr);
  EXPECT_NE(five->Find("model.layers.5.eh_proj.weight"), nullptr);  // MTP renumbered
  EXPECT_EQ(five->Find("model.layers.61.eh_proj.weight"), nullptr);
  EXPECT_EQ(ExpertWeights(*five), 3u * 256 * 3);  // layers 3, 4 and MTP layer 5
}

// ---- FP8 generically, quantisation errors ---------------------------------------------

TEST(DescribeFp8, DenseAndMoeFamiliesGetScales) {
  SW_REQUIRE_MODELS_DIR(models);
  ModelConfig c = MustLoad(models + "/Qwen3-30B-A3B/config.json");
  c.num_hidden_layers = 2;
  c.quant_method = "fp8";
  c.fp8_block_size = std::array<std::int64_t, 2>{128, 128};
  const ModelDescription d = MustDescribe(c);
  const std::string p = "model.layers.1.";
  CheckTensors(d, {
      {p + "self_attn.k_proj.weight", DType::kF8E4M3, {512, 2048}, R::kColumn, 1},
      {p + "self_attn.k_proj.weight_scale_inv", DType::kF32, {4, 16}, R::kColumn, 1},
      {p + "mlp.experts.5.down_proj.weight_scale_inv", DType::kF32, {16, 6}, R::kRow, 1, 5},
      {p + "mlp.gate.weight", DType::kBF16, {128, 2048}, R::kReplicated, 1},
      {p + "self_attn.q_norm.weight", DType::kBF16, {128}, R::kReplicated, 1},
      {"lm_head.weight", DType::kBF16, {151936, 2048}, R::kVocab, -1},
  });
  const FusedParameter* s = FindFused(d, p + "self_attn.qkv_proj.weight_scale_inv");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->parts.size(), 3u);
  EXPECT_EQ(FusedRows(d, *s), 32 + 4 + 4);
  CheckInvariants(d);

  // Clearing the quantisation describes the BF16 original (what a trainer holds).
  c.quant_method.clear();
  c.fp8_block_size.reset();
  const ModelDescription bf16 = MustDescribe(c);
  EXPECT_EQ(bf16.Find(p + "self_attn.k_proj.weight")->spec.dtype, DType::kBF16);
  EXPECT_EQ(bf16.Find(p + "self_attn.k_proj.weight_scale_inv"), nullptr);
}

TEST(DescribeFp8, UnsupportedQuantisationIsReported) {
  ModelConfig c;
  c.model_type = "llama";
  c.hidden_size = 8;
  c.num_hidden_layers = 1;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 4;
  c.intermediate_size = 12;
  c.vocab_size = 10;
  c.quant_method = "awq";
  auto d = DescribeModel(c);
  EXPECT_EQ(d.status().code(), ErrorCode::kUnsupported);
  EXPECT_MESSAGE_HAS(d.status(), "\"awq\"");
  c.quant_method = "fp8";  // per-tensor FP8: no weight_block_size
  d = DescribeModel(c);
  EXPECT_EQ(d.status().code(), ErrorCode::kUnsupported);
  EXPECT_MESSAGE_HAS(d.status(), "weight_block_size");
  c.fp8_block_size = std::array<std::int64_t, 2>{128, 128};
  d = DescribeModel(c);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  // Tiny weights: one partial block each.
  EXPECT_EQ(d->Find("model.layers.0.mlp.down_proj.weight_scale_inv")->spec.shape, (Shape{1, 1}));
}

TEST(DescribeMla, MissingMlaFieldIsInvalidArgument) {
  SW_REQUIRE_MODELS_DIR(models);
  ModelConfig c = MustLoad(models + "/tiny-deepseek-v2-f32/tiny_deepseek_v2_config.json");
  c.kv_lora_rank.reset();
  auto d = DescribeModel(c);
  EXPECT_EQ(d.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_MESSAGE_HAS(d.status(), "kv_lora_rank");
}

// A generated FP8 DeepSeek-V3-shaped checkpoint directory round-trips: its config.json
// (with quantization_config) re-describes the same tensors, and the file matches.
TEST(DescribeFp8, GeneratedDeepseekV3CheckpointRoundTrips) {
  ModelConfig c;
  c.architecture = "DeepseekV3ForCausalLM";
  c.model_type = "deepseek_v3";
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 4;
  c.head_dim = 16;
  c.intermediate_size = 96;
  c.vocab_size = 50;
  c.torch_dtype = DType::kBF16;
  c.num_experts = 4;
  c.num_experts_per_tok = 2;
  c.moe_intermediate_size = 32;
  c.n_shared_experts = 1;
  c.first_k_dense_replace = 1;
  c.moe_layer_freq = 1;
  c.q_lora_rank = 48;
  c.kv_lora_rank = 32;
  c.qk_nope_head_dim = 16;
  c.qk_rope_head_dim = 8;
  c.v_head_dim = 16;
  c.num_nextn_predict_layers = 1;
  c.quant_method = "fp8";
  c.fp8_block_size = std::array<std::int64_t, 2>{16, 16};
  const ModelDescription d = MustDescribe(c);
  CheckInvariants(d);
  EXPECT_EQ(d.Find("model.layers.2.self_attn.kv_a_proj_with_mqa.weight_scale_inv")->spec.shape,
            (Shape{3, 4}));  // ceil(40 / 16), 64 / 16

  testing::TempDir dir;
  ASSERT_TRUE(GenerateCheckpointDirectory(d, dir.path()).ok());
  auto cp = Checkpoint::Open(dir.path());
  ASSERT_TRUE(cp.ok()) << cp.status().ToString();
  const ModelConfig back = MustLoad(cp->config_path());
  EXPECT_EQ(back, c);
  const ModelDescription again = MustDescribe(back);
  EXPECT_EQ(again.tensors, d.tensors);
  EXPECT_EQ(again.fused, d.fused);
  const Status s = CheckCheckpointMatchesModel(again, cp->tensors(), "generated");
  EXPECT_TRUE(s.ok()) << s.ToString();
}

TEST(ModelConfigMoe, NewKeysParseAndRoundTrip) {
  auto c = ParseModelConfig(R"({"model_type":"qwen3_moe","hidden_size":8,"num_hidden_layers":4,
    "num_attention_heads":2,"intermediate_size":12,"vocab_size":10,"num_experts":4,
    "moe_intermediate_size":4,"decoder_sparse_step":2,"mlp_only_layers":[0,3],
    "quantization_config":{"quant_method":"fp8","weight_block_size":[128,64]}})",
                            "q.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->decoder_sparse_step, 2);
  EXPECT_EQ(c->mlp_only_layers, (std::vector<std::int64_t>{0, 3}));
  EXPECT_EQ(c->quant_method, "fp8");
  EXPECT_EQ(c->fp8_block_size, (std::array<std::int64_t, 2>{128, 64}));
  testing::TempDir dir;
  ASSERT_TRUE(WriteModelConfig(*c, dir.File("config.json")).ok());
  auto back = LoadModelConfig(dir.File("config.json"));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, *c);

  auto bad = ParseModelConfig(R"({"model_type":"llama","hidden_size":8,"num_hidden_layers":1,
    "num_attention_heads":2,"intermediate_size":12,"vocab_size":10,
    "quantization_config":{"quant_method":"fp8","weight_block_size":[128]}})",
                              "bad.json");
  EXPECT_EQ(bad.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(bad.status(), "weight_block_size");
  auto bad_list = ParseModelConfig(R"({"model_type":"llama","hidden_size":8,"num_hidden_layers":1,
    "num_attention_heads":2,"intermediate_size":12,"vocab_size":10,"mlp_only_layers":[1.5]})",
                                   "bad.json");
  EXPECT_EQ(bad_list.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(bad_list.status(), "mlp_only_layers");
}

}  // namespace
}  // namespace shardwire
