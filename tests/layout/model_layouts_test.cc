// Engine and trainer layouts of real model families, checked against hand-computed
// expectations of what vLLM / SGLang and torchtitan hold on each rank.
#include "shardwire/model_layouts.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "describe_model.h"
#include "shardwire/layout.h"
#include "shardwire/model_config.h"
#include "shardwire/model_rules.h"

namespace shardwire {
namespace {

using layout_test::Describe;

// Llama: hidden 64, 4 heads, 2 kv heads of 16, 3 layers, vocab 100 (not a multiple of 64).
ModelDescription Llama() {
  return Describe(R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
      "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 100, "torch_dtype": "bfloat16"})");
}

ModelDescription Qwen3Moe() {
  return Describe(R"({"model_type": "qwen3_moe", "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
      "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 32, "vocab_size": 64, "num_experts": 4,
      "num_experts_per_tok": 2, "moe_intermediate_size": 8, "torch_dtype": "bfloat16"})");
}

const ShardRef& Shard(const Layout& layout, int rank, const std::string& name) {
  const auto t = layout.TensorIndex(name);
  EXPECT_TRUE(t.ok()) << name;
  const ShardRef* s = layout.rank(rank).Find(*t);
  EXPECT_NE(s, nullptr) << name << " on rank " << rank;
  static const ShardRef none{};
  return s ? *s : none;
}

bool Holds(const Layout& layout, int rank, const std::string& name) {
  return layout.rank(rank).Find(*layout.TensorIndex(name)) != nullptr;
}

TEST(EngineLayout, KeyValueHeadsReplicatedWhenFewerThanTp) {
  const Layout l = MakeEngineLayout(Llama(), {.tp = 4}).value();
  // 2 kv heads of 16 rows over 4 ranks: ranks 0,1 hold head 0, ranks 2,3 head 1.
  EXPECT_EQ(Shard(l, 0, "model.layers.0.self_attn.k_proj.weight").box, (Box{{0, 0}, {16, 64}}));
  EXPECT_EQ(Shard(l, 1, "model.layers.0.self_attn.k_proj.weight").box, (Box{{0, 0}, {16, 64}}));
  EXPECT_EQ(Shard(l, 3, "model.layers.0.self_attn.v_proj.weight").box, (Box{{16, 0}, {16, 64}}));
  // q is split normally: 64 rows / 4.
  EXPECT_EQ(Shard(l, 3, "model.layers.0.self_attn.q_proj.weight").box, (Box{{48, 0}, {16, 64}}));
  // o_proj is row-parallel: dim 1.
  EXPECT_EQ(Shard(l, 1, "model.layers.0.self_attn.o_proj.weight").box, (Box{{0, 16}, {64, 16}}));
}

// An FP8 block-quantised Llama (blocks of 128 x 128) with `intermediate` MLP rows.
ModelDescription Fp8Llama(int intermediate) {
  return Describe(fmt::format(
      R"({{"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 1, "num_attention_heads": 2,
      "num_key_value_heads": 2, "intermediate_size": {}, "vocab_size": 128, "torch_dtype": "bfloat16",
      "quantization_config": {{"quant_method": "fp8", "weight_block_size": [128, 128]}}}})",
      intermediate));
}

// TP splits an FP8 weight on whole blocks, so each rank's weight_scale_inv covers its own rows.
// 456 MLP rows at tp=2 split evenly (228 per rank) and so do their 4 scale rows (2 per rank),
// yet rank 1's scale rows [2, 4) start at weight row 256, not 228: refused, as vLLM refuses it.
TEST(EngineLayout, Fp8WeightsAreSplitOnWholeBlocks) {
  const Layout l = MakeEngineLayout(Fp8Llama(512), {.tp = 2}).value();
  EXPECT_EQ(Shard(l, 1, "model.layers.0.mlp.gate_proj.weight").box, (Box{{256, 0}, {256, 256}}));
  EXPECT_EQ(Shard(l, 1, "model.layers.0.mlp.gate_proj.weight_scale_inv").box, (Box{{2, 0}, {2, 2}}));
  EXPECT_EQ(Shard(l, 1, "model.layers.0.mlp.down_proj.weight_scale_inv").box, (Box{{0, 2}, {2, 2}}));
  auto unaligned = MakeEngineLayout(Fp8Llama(456), {.tp = 2});
  ASSERT_FALSE(unaligned.ok());
  EXPECT_EQ(unaligned.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(unaligned.status().message().find("mlp."), std::string::npos) << unaligned.status().message();
  EXPECT_NE(unaligned.status().message().find("FP8 block size 128"), std::string::npos) << unaligned.status().message();
  // The same model is fine unsharded, and a BF16 engine of it at tp=2 too.
  EXPECT_TRUE(MakeEngineLayout(Fp8Llama(456), {.tp = 1}).ok());
  EXPECT_TRUE(MakeEngineLayout(Describe(R"({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 1,
      "num_attention_heads": 2, "num_key_value_heads": 2, "intermediate_size": 456, "vocab_size": 128,
      "torch_dtype": "bfloat16"})"),
                               {.tp = 2})
                  .ok());
}

// Shard sizes that are not multiples of the 64-byte alignment (q: 6 rows x 24 x 2 bytes =
// 288 per rank), so a layout that merely aligned every shard would leave gaps.
ModelDescription OddLlama() {
  return Describe(R"({"model_type": "llama", "hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
      "num_key_value_heads": 2, "head_dim": 6, "intermediate_size": 18, "vocab_size": 64, "torch_dtype": "bfloat16"})");
}

TEST(EngineLayout, FusedParametersAreContiguous) {
  const Layout l = MakeEngineLayout(OddLlama(), {.tp = 2}).value();
  for (int r = 0; r < 2; ++r) {
    const ShardRef& q = Shard(l, r, "model.layers.1.self_attn.q_proj.weight");
    const ShardRef& k = Shard(l, r, "model.layers.1.self_attn.k_proj.weight");
    const ShardRef& v = Shard(l, r, "model.layers.1.self_attn.v_proj.weight");
    // qkv_proj = cat([q, k, v]) of the rank's shards: k right after q, v right after k.
    EXPECT_EQ(k.byte_offset, q.byte_offset + static_cast<std::uint64_t>(q.box.numel()) * 2);
    EXPECT_EQ(v.byte_offset, k.byte_offset + static_cast<std::uint64_t>(k.box.numel()) * 2);
    const ShardRef& gate = Shard(l, r, "model.layers.1.mlp.gate_proj.weight");
    const ShardRef& up = Shard(l, r, "model.layers.1.mlp.up_proj.weight");
    EXPECT_EQ(up.byte_offset, gate.byte_offset + static_cast<std::uint64_t>(gate.box.numel()) * 2);
    EXPECT_EQ(q.byte_offset % 64, 0u);
  }
  // Unfused, k starts at the next 64-byte boundary after q (a gap); fusing changes where
  // shards sit, never which bytes a rank holds.
  const Layout unfused = MakeEngineLayout(OddLlama(), {.tp = 2, .fuse = false}).value();
  const ShardRef& uq = Shard(unfused, 0, "model.layers.1.self_attn.q_proj.weight");
  const ShardRef& uk = Shard(unfused, 0, "model.layers.1.self_attn.k_proj.weight");
  EXPECT_GT(uk.byte_offset, uq.byte_offset + static_cast<std::uint64_t>(uq.box.numel()) * 2);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(unfused.rank(r).shards.size(), l.rank(r).shards.size());
    for (std::size_t i = 0; i < l.rank(r).shards.size(); ++i) {
      EXPECT_EQ(unfused.rank(r).shards[i].box, l.rank(r).shards[i].box);
    }
  }
}

TEST(EngineLayout, VocabPaddedAndPaddingReservedNotSent) {
  const Layout l = MakeEngineLayout(Llama(), {.tp = 2}).value();
  // vocab 100 -> padded to 128 -> 64 rows per rank; rank 1 holds rows 64..100 plus 28
  // padding rows reserved behind them.
  const ShardRef& e0 = Shard(l, 0, "model.embed_tokens.weight");
  const ShardRef& e1 = Shard(l, 1, "model.embed_tokens.weight");
  EXPECT_EQ(e0.box, (Box{{0, 0}, {64, 64}}));
  EXPECT_EQ(e1.box, (Box{{64, 0}, {36, 64}}));
  const std::uint32_t next = *l.TensorIndex("model.embed_tokens.weight") + 1;
  EXPECT_GE(l.rank(1).Find(next)->byte_offset, e1.byte_offset + 64u * 64 * 2);
}

TEST(EngineLayout, PipelineStagesFollowVllm) {
  // get_pp_indices(3 layers, 2 stages) = [0, 2), [2, 3).
  const Layout l = MakeEngineLayout(Llama(), {.tp = 1, .pp = 2}).value();
  EXPECT_TRUE(Holds(l, 0, "model.embed_tokens.weight"));
  EXPECT_TRUE(Holds(l, 0, "model.layers.1.mlp.down_proj.weight"));
  EXPECT_FALSE(Holds(l, 0, "model.layers.2.mlp.down_proj.weight"));
  EXPECT_TRUE(Holds(l, 1, "model.layers.2.mlp.down_proj.weight"));
  EXPECT_TRUE(Holds(l, 1, "lm_head.weight"));
  EXPECT_TRUE(Holds(l, 1, "model.norm.weight"));
  EXPECT_FALSE(Holds(l, 1, "model.embed_tokens.weight"));
}

TEST(EngineLayout, ExpertsUnderExpertParallelismWithAnyMap) {
  const Layout linear = MakeEngineLayout(Qwen3Moe(), {.tp = 2, .dp = 2, .ep = 2}).value();
  EXPECT_TRUE(Holds(linear, 0, "model.layers.0.mlp.experts.1.up_proj.weight"));
  EXPECT_FALSE(Holds(linear, 0, "model.layers.0.mlp.experts.2.up_proj.weight"));
  EXPECT_TRUE(Holds(linear, 3, "model.layers.0.mlp.experts.3.down_proj.weight"));  // replica 1, tp rank 1
  EXPECT_EQ(Shard(linear, 1, "model.layers.0.mlp.experts.2.down_proj.weight").box, (Box{{0, 0}, {16, 8}}));
  const Layout mapped = MakeEngineLayout(Qwen3Moe(), {.tp = 2, .ep = 2, .expert_to_rank = {1, 0, 1, 0}}).value();
  EXPECT_TRUE(Holds(mapped, 1, "model.layers.1.mlp.experts.0.gate_proj.weight"));
  EXPECT_TRUE(Holds(mapped, 0, "model.layers.1.mlp.experts.3.gate_proj.weight"));
  EXPECT_FALSE(Holds(mapped, 0, "model.layers.1.mlp.experts.0.gate_proj.weight"));
  EXPECT_FALSE(MakeEngineLayout(Qwen3Moe(), {.tp = 2, .ep = 2, .expert_to_rank = {0, 2, 0, 0}}).ok());
  EXPECT_FALSE(MakeEngineLayout(Qwen3Moe(), {.tp = 2, .ep = 4}).ok());  // ep must be 1 or tp
}

TEST(EngineLayout, RejectsImpossibleSizesNamingThem) {
  auto l = MakeEngineLayout(Llama(), {.tp = 3});
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("TP size 3 does not divide the 4 attention heads"), std::string::npos);
  l = MakeEngineLayout(Llama(), {.tp = 1, .pp = 4});
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.status().message().find("4 pipeline stages for 3 decoder layers"), std::string::npos);
}

// A model whose config names no attention heads (0: ModelConfig, e.g. a state-space model described
// by a user's rules): its tensors' roles alone decide the split.
TEST(EngineLayout, AModelWithoutAttentionHeadsSplitsByItsRoles) {
  ModelConfig c;
  c.model_type = "ssm-toy";
  c.hidden_size = 8;
  c.num_hidden_layers = 1;
  c.vocab_size = 10;
  c.torch_dtype = DType::kF32;
  auto rules = ModelRules::Parse(R"(family: ssm-toy
model_types: [ssm-toy]
tensors:
  - linear: model.layers.0.mixer.in_proj
    out: 2 * hidden_size
    in: hidden_size
    role: column
  - linear: model.layers.0.attn.k_proj
    out: hidden_size
    in: hidden_size
    role: column
)",
                                 "ssm.yaml");
  ASSERT_TRUE(rules.ok()) << rules.status().ToString();
  auto d = rules->Describe(c);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  auto l = MakeEngineLayout(*d, {.tp = 2});
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ(Shard(*l, 1, "model.layers.0.mixer.in_proj.weight").box, (Box{{8, 0}, {8, 8}}));
  // A k_proj of a config without key/value heads is split by its role (it divided by the 0
  // key/value heads: SIGFPE).
  EXPECT_EQ(Shard(*l, 1, "model.layers.0.attn.k_proj.weight").box, (Box{{4, 0}, {4, 8}}));
  // Heads absent but key/value heads given: still checked against TP.
  c.num_key_value_heads = 3;
  auto three = rules->Describe(c);
  ASSERT_TRUE(three.ok());
  EXPECT_FALSE(MakeEngineLayout(*three, {.tp = 4}).ok());
}

TEST(TrainerLayout, FsdpTpShardsTheTpShard) {
  // fsdp=2,tp=2: q_proj [64, 64] TP rows 0..32 on t=0, then FSDP halves of those rows.
  const Layout l = MakeTrainerLayout(Llama(), {.dp_shard = 2, .tp = 2}).value();
  EXPECT_EQ(l.world_size(), 4);
  // rank = s * tp + t.
  EXPECT_EQ(Shard(l, 0, "model.layers.0.self_attn.q_proj.weight").box, (Box{{0, 0}, {16, 64}}));
  EXPECT_EQ(Shard(l, 2, "model.layers.0.self_attn.q_proj.weight").box, (Box{{16, 0}, {16, 64}}));
  EXPECT_EQ(Shard(l, 1, "model.layers.0.self_attn.q_proj.weight").box, (Box{{32, 0}, {16, 64}}));
  // o_proj row-parallel: TP on dim 1, FSDP on dim 0 of that shard.
  EXPECT_EQ(Shard(l, 3, "model.layers.0.self_attn.o_proj.weight").box, (Box{{32, 32}, {32, 32}}));
}

TEST(TrainerLayout, HsdpReplicaGroupsShareRankClasses) {
  const Layout l = MakeTrainerLayout(Llama(), {.dp_replicate = 2, .dp_shard = 3}).value();
  EXPECT_EQ(l.world_size(), 6);
  EXPECT_EQ(l.num_rank_classes(), 3u);
  EXPECT_EQ(l.ranks_of_class(1), (std::vector<std::uint32_t>{1, 4}));
  // torch.chunk of 100 vocab rows in 3: 34, 34, 32.
  EXPECT_EQ(Shard(l, 5, "model.embed_tokens.weight").box, (Box{{68, 0}, {32, 64}}));
}

TEST(TrainerLayout, FsdpWithExpertParallelism) {
  // fsdp=4,ep=2: ep_rank = s % 2 owns experts {0,1} or {2,3}; FSDP over s / 2 in {0, 1}
  // with 2 local experts >= 2 FSDP ranks: whole experts, one each.
  const Layout l = MakeTrainerLayout(Qwen3Moe(), {.dp_shard = 4, .ep = 2}).value();
  EXPECT_TRUE(Holds(l, 0, "model.layers.0.mlp.experts.0.up_proj.weight"));
  EXPECT_TRUE(Holds(l, 2, "model.layers.0.mlp.experts.1.up_proj.weight"));
  EXPECT_TRUE(Holds(l, 1, "model.layers.0.mlp.experts.2.up_proj.weight"));
  EXPECT_TRUE(Holds(l, 3, "model.layers.0.mlp.experts.3.up_proj.weight"));
  EXPECT_FALSE(Holds(l, 0, "model.layers.0.mlp.experts.1.up_proj.weight"));
  EXPECT_EQ(Shard(l, 3, "model.layers.0.mlp.experts.3.up_proj.weight").box, (Box{{0, 0}, {8, 16}}));
  // fsdp=8,ep=2: 2 local experts < 4 FSDP ranks: each expert's dim 0 split in 4.
  const Layout split = MakeTrainerLayout(Qwen3Moe(), {.dp_shard = 8, .ep = 2}).value();
  EXPECT_EQ(Shard(split, 6, "model.layers.0.mlp.experts.0.up_proj.weight").box, (Box{{6, 0}, {2, 16}}));
  EXPECT_FALSE(MakeTrainerLayout(Qwen3Moe(), {.dp_shard = 3, .ep = 2}).ok());
  // A dense model: said so, not "does not divide the 0 routed experts".
  const Status dense = MakeTrainerLayout(Llama(), {.dp_shard = 2, .ep = 2}).status();
  EXPECT_EQ(dense.code(), ErrorCode::kInvalidArgument);
  EXPECT_NE(dense.message().find("ep=2 for llama, which has no experts"), std::string::npos) << dense.ToString();
}

TEST(LayoutString, ParsesExamplesAndPointsAtErrors) {
  const ModelDescription m = Qwen3Moe();
  EXPECT_EQ(MakeLayoutFromString(m, "fsdp=8")->description(), "fsdp=8");
  EXPECT_EQ(MakeLayoutFromString(m, "hsdp=2x4")->world_size(), 8);
  EXPECT_EQ(MakeLayoutFromString(m, "tp=2,ep=2,dp=3")->world_size(), 6);
  EXPECT_EQ(MakeLayoutFromString(m, "pp=2,tp=2")->world_size(), 4);
  struct Bad {
    const char* spec;
    const char* message;
  };
  for (const Bad& bad :
       {Bad{"tp=4,xp=2", "unknown key \"xp\" at character 6"},
        Bad{"hsdp=2y8", "hsdp wants RxS, got \"2y8\" at character 6"},
        Bad{"tp=0", "\"0\" is not a positive integer at character 4"},
        Bad{"tp=2,,dp=2", "\"\" is not key=value at character 6"}, Bad{"fsdp=2,dp=2", "dp is for engine layouts"},
        Bad{"tp=2,tp=2", "given twice"}, Bad{"", "empty layout"}}) {
    auto l = MakeLayoutFromString(m, bad.spec);
    ASSERT_FALSE(l.ok()) << bad.spec;
    EXPECT_EQ(l.status().code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(l.status().message().find(bad.message), std::string::npos) << l.status().message();
  }
}

// Layout strings are untrusted (fuzz/layout_string_fuzzer.cc): the product of the sizes
// is checked in 64 bits before anything is built. Without the check, "tp=1,dp=65536,pp=2"
// style products overflow int (undefined behaviour) and "fsdp=2147483647" allocates one
// rank class per rank.
TEST(LayoutString, RankCountsBeyondTheLimitsAreRejected) {
  const ModelDescription m = Llama();
  for (const char* spec : {"dp=2147483647", "dp=65536,pp=2,tp=65536", "hsdp=65536x65536", "fsdp=1048577"}) {
    auto l = MakeLayoutFromString(m, spec);
    ASSERT_FALSE(l.ok()) << spec;
    EXPECT_EQ(l.status().code(), ErrorCode::kInvalidArgument) << spec;
    EXPECT_NE(l.status().message().find("the layout has more than"), std::string::npos) << l.status().message();
  }
  // Engine replicas share shards: a million of them is a 4 MB table, allowed.
  auto wide = MakeLayoutFromString(m, "dp=1048576");
  ASSERT_TRUE(wide.ok()) << wide.status().ToString();
  EXPECT_EQ(wide->world_size(), 1048576);
  EXPECT_EQ(wide->num_rank_classes(), 1u);
  // FSDP ranks each hold their own shards: capped at 65536 classes.
  EXPECT_TRUE(MakeLayoutFromString(m, "fsdp=65537").status().message().find("distinct shards") != std::string::npos);
}

// A hand-built description (the C++ API) may hold a tensor of more dimensions than a box
// holds inline: every builder refuses it before building a box (8 dimensions overwrote the
// box's size field, a wrong "wrong rank" error; 64 crashed).
TEST(LayoutBuilders, ATensorOfMoreThanSixDimensionsIsRefusedBeforeAnyBox) {
  ModelDescription m = Llama();
  const std::string name = m.tensors.front().spec.name;
  m.tensors.front().spec.shape = std::vector<std::int64_t>(8, 1);
  m.tensors.front().role = ParallelRole::kReplicated;
  const auto expect_refused = [&](const Status& s, const std::string& where) {
    EXPECT_EQ(s.code(), ErrorCode::kInvalidArgument) << where << ": " << s.ToString();
    EXPECT_NE(s.message().find("tensor " + name + " has 8 dimensions (Shardwire handles at most 6)"), std::string::npos)
        << where << ": " << s.message();
  };
  expect_refused(MakeEngineLayout(m, EngineLayoutOptions{.tp = 2}).status(), "engine");
  expect_refused(MakeTrainerLayout(m, TrainerLayoutOptions{.dp_shard = 2}).status(), "trainer");
  expect_refused(MakeLayoutFromString(m, "fsdp=2").status(), "string");
  std::vector<TensorSpec> specs = {{"big", DType::kF32, std::vector<std::int64_t>(64, 1)}};
  const Status fsdp = MakeFsdpLayout(specs, 2).status();
  EXPECT_NE(fsdp.message().find("layout fsdp=2: tensor big has 64 dimensions"), std::string::npos) << fsdp.ToString();
  const Status tp = MakeTpLayout(specs, {-1}, 2, 1).status();
  EXPECT_NE(tp.message().find("layout tp=2: tensor big has 64 dimensions"), std::string::npos) << tp.ToString();
  specs[0].shape.resize(6);
  EXPECT_TRUE(MakeFsdpLayout(specs, 2).ok()) << "six dimensions are allowed";
}

}  // namespace
}  // namespace shardwire
