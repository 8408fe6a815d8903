// ParseModelConfig / LoadModelConfig / WriteModelConfig on every real config and on
// broken ones.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdint>
#include <filesystem>
#include <fstream>

#include "model/test_util.h"
#include "shardwire/model_config.h"
#include "shardwire/model_rules.h"

namespace shardwire {
namespace {

using testing::TempDir;

// Every config file in shared/models (SOURCES.md sections 1 and 2).
constexpr const char* kConfigs[] = {
    "DeepSeek-V3/config.json",
    "Kimi-K2-Instruct/config.json",
    "Llama-3.1-8B/config.json",
    "Llama-3.3-70B-Instruct/config.json",
    "Qwen3-30B-A3B/config.json",
    "tiny-deepseek-v2-f32/tiny_deepseek_v2_config.json",
    "tiny-gpt2-cicd/config.json",
    "tiny-llama-f32-sharded/tiny_llama_config.json",
    "tiny-llama3-bf16/config.json",
    "tiny-mistral-f32/tiny_mistral_config.json",
    "tiny-mixtral-f32/tiny_mixtral_config.json",
    "tiny-qwen2-f32/tiny_qwen2_config.json",
    "tiny-qwen3-bf16/config.json",
    "tiny-qwen3-f32/tiny_qwen3_config.json",
    "tiny-qwen3-moe-f32/tiny_qwen3_moe_config.json",
    "tiny-qwen3-sharded-mlx4bit/config.json",
};

ModelConfig MustLoad(const std::string& models, const std::string& rel) {
  auto c = LoadModelConfig(models + "/" + rel);
  EXPECT_TRUE(c.ok()) << rel << ": " << c.status().ToString();
  return c.ok() ? *c : ModelConfig{};
}

TEST(ModelConfig, EveryRealConfigParsesAndRoundTrips) {
  SW_REQUIRE_MODELS_DIR(models);
  TempDir dir;
  for (const char* rel : kConfigs) {
    SCOPED_TRACE(rel);
    const ModelConfig c = MustLoad(models, rel);
    EXPECT_FALSE(c.model_type.empty());
    EXPECT_GT(c.hidden_size, 0);
    EXPECT_EQ(c.num_attention_heads % c.num_key_value_heads, 0);
    const std::string out = dir.File("config.json");
    ASSERT_TRUE(WriteModelConfig(c, out).ok());
    auto back = LoadModelConfig(out);
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(*back, c);
  }
}

// config.json is parsed with a bound on its nesting (model/bounded_json.h): a value 100,000
// levels deep crashed the error message that printed it; 64 levels still parse.
TEST(ModelConfig, AValueNestedDeeperThan64LevelsIsCorruptDataNotACrash) {
  const std::string deep = std::string(100'000, '[') + std::string(100'000, ']');
  auto c = ParseModelConfig("{\"model_type\":\"llama\",\"hidden_size\":" + deep + "}", "deep/config.json");
  EXPECT_EQ(c.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(c.status().message().find("deep/config.json"), std::string::npos) << c.status().ToString();
  EXPECT_NE(c.status().message().find("nested deeper than 64 levels"), std::string::npos) << c.status().ToString();
  // 64 levels (the top-level object is the first) parse; the value is then simply not an integer.
  const std::string sixty_three = std::string(63, '[') + std::string(63, ']');
  c = ParseModelConfig("{\"model_type\":\"llama\",\"hidden_size\":" + sixty_three + "}", "ok/config.json");
  EXPECT_EQ(c.status().message().find("nested deeper"), std::string::npos) << c.status().ToString();
  EXPECT_NE(c.status().message().find("hidden_size"), std::string::npos) << c.status().ToString();
}

// A config.json of more than kMaxConfigJsonValues values (real ones have a few hundred) is
// refused: convert edits it as an ordered_json, whose insertion is linear in the members before
// (80,000 keys took 11 s).
TEST(ModelConfig, AConfigOfMoreThanFiftyThousandValuesIsCorruptData) {
  std::string text = "{\"model_type\":\"llama\"";
  for (int i = 0; i < 60'000; ++i) text += ",\"k" + std::to_string(i) + "\":0";
  text += "}";
  auto c = ParseModelConfig(text, "wide/config.json");
  EXPECT_EQ(c.status().code(), ErrorCode::kCorruptData);
  EXPECT_NE(c.status().message().find("wide/config.json: more than 50000 values"), std::string::npos)
      << c.status().ToString();
}

// A config (or rules file, or index: all read by ReadRegularFile) that is not a regular file is
// refused without reading it: /dev/zero was read until memory ran out, and a FIFO blocked the
// open until a writer came. A file past the size cap is refused before it is read.
TEST(ModelConfig, ANonRegularOrHugeFileIsRefusedWithoutReadingIt) {
  auto zero = LoadModelConfig("/dev/zero");
  EXPECT_EQ(zero.status().code(), ErrorCode::kIoError) << zero.status().ToString();
  EXPECT_MESSAGE_HAS(zero.status(), "/dev/zero is not a regular file");
  TempDir dir;
  const std::string fifo = dir.File("config.json");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto from_fifo = LoadModelConfig(fifo);
  EXPECT_EQ(from_fifo.status().code(), ErrorCode::kIoError) << from_fifo.status().ToString();
  EXPECT_MESSAGE_HAS(from_fifo.status(), "is not a regular file");
  const std::string huge = dir.File("huge.json");
  std::ofstream(huge).put('{');
  std::filesystem::resize_file(huge, (std::uint64_t{64} << 20) + 1);  // sparse
  auto from_huge = LoadModelConfig(huge);
  EXPECT_EQ(from_huge.status().code(), ErrorCode::kIoError) << from_huge.status().ToString();
  EXPECT_MESSAGE_HAS(from_huge.status(), "67108865 bytes, more than the 67108864");
  const Status rules = LoadUserModelRules("/dev/zero");
  EXPECT_EQ(rules.code(), ErrorCode::kIoError) << rules.ToString();
}

TEST(ModelConfig, Llama31_8B) {
  SW_REQUIRE_MODELS_DIR(models);
  const ModelConfig c = MustLoad(models, "Llama-3.1-8B/config.json");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);  // derived: no head_dim key
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.torch_dtype, DType::kBF16);
  EXPECT_FALSE(c.num_experts.has_value());
}

TEST(ModelConfig, Llama33_70B) {
  SW_REQUIRE_MODELS_DIR(models);
  const ModelConfig c = MustLoad(models, "Llama-3.3-70B-Instruct/config.json");
  EXPECT_EQ(c.hidden_size, 8192);
  EXPECT_EQ(c.num_hidden_layers, 80);
  EXPECT_EQ(c.num_attention_heads, 64);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.intermediate_size, 28672);
}

TEST(ModelConfig, Qwen3Moe30B) {
  SW_REQUIRE_MODELS_DIR(models);
  const ModelConfig c = MustLoad(models, "Qwen3-30B-A3B/config.json");
  EXPECT_EQ(c.model_type, "qwen3_moe");
  EXPECT_EQ(c.head_dim, 128);  // explicit, != 2048 / 32
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.num_experts, 128);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe_intermediate_size, 768);
  EXPECT_EQ(c.vocab_size, 151936);
}

TEST(ModelConfig, DeepSeekV3AndKimiK2) {
  SW_REQUIRE_MODELS_DIR(models);
  const ModelConfig ds = MustLoad(models, "DeepSeek-V3/config.json");
  EXPECT_EQ(ds.architecture, "DeepseekV3ForCausalLM");
  EXPECT_EQ(ds.num_hidden_layers, 61);
  EXPECT_EQ(ds.num_experts, 256);  // from n_routed_experts
  EXPECT_EQ(ds.n_shared_experts, 1);
  EXPECT_EQ(ds.first_k_dense_replace, 3);
  EXPECT_EQ(ds.q_lora_rank, 1536);
  EXPECT_EQ(ds.kv_lora_rank, 512);
  EXPECT_EQ(ds.qk_nope_head_dim, 128);
  EXPECT_EQ(ds.qk_rope_head_dim, 64);
  EXPECT_EQ(ds.v_head_dim, 128);
  EXPECT_EQ(ds.moe_intermediate_size, 2048);
  EXPECT_EQ(ds.vocab_size, 129280);

  const ModelConfig kimi = MustLoad(models, "Kimi-K2-Instruct/config.json");
  EXPECT_EQ(kimi.model_type, "kimi_k2");
  EXPECT_EQ(kimi.architecture, "DeepseekV3ForCausalLM");
  EXPECT_EQ(kimi.num_attention_heads, 64);
  EXPECT_EQ(kimi.num_experts, 384);
  EXPECT_EQ(kimi.first_k_dense_replace, 1);
  EXPECT_EQ(kimi.vocab_size, 163840);
}

TEST(ModelConfig, TinyConfigsQuirks) {
  SW_REQUIRE_MODELS_DIR(models);
  const ModelConfig gpt2 = MustLoad(models, "tiny-gpt2-cicd/config.json");
  EXPECT_EQ(gpt2.hidden_size, 16);  // n_embd
  EXPECT_EQ(gpt2.num_hidden_layers, 1);
  EXPECT_EQ(gpt2.num_attention_heads, 1);
  EXPECT_EQ(gpt2.intermediate_size, 64);  // n_inner null -> 4 * n_embd
  EXPECT_EQ(gpt2.vocab_size, 100);
  EXPECT_TRUE(gpt2.tie_word_embeddings);  // GPT-2 ties by default
  EXPECT_EQ(gpt2.torch_dtype, DType::kF32);

  const ModelConfig qwen2 = MustLoad(models, "tiny-qwen2-f32/tiny_qwen2_config.json");
  EXPECT_TRUE(qwen2.attention_bias);  // no key; qwen2 always has q/k/v biases
  EXPECT_FALSE(qwen2.torch_dtype.has_value());

  const ModelConfig llama3 = MustLoad(models, "tiny-llama3-bf16/config.json");
  EXPECT_EQ(llama3.architecture, "");  // no architectures key
  EXPECT_FALSE(llama3.torch_dtype.has_value());
  EXPECT_EQ(llama3.dtype(), DType::kBF16);
  EXPECT_EQ(llama3.head_dim, 16);

  const ModelConfig qwen3 = MustLoad(models, "tiny-qwen3-f32/tiny_qwen3_config.json");
  EXPECT_EQ(qwen3.head_dim, 6);
  EXPECT_TRUE(qwen3.tie_word_embeddings);

  const ModelConfig v2 = MustLoad(models, "tiny-deepseek-v2-f32/tiny_deepseek_v2_config.json");
  EXPECT_FALSE(v2.q_lora_rank.has_value());  // null
  EXPECT_EQ(v2.kv_lora_rank, 5);
  EXPECT_EQ(v2.n_shared_experts, 2);

  const ModelConfig mixtral = MustLoad(models, "tiny-mixtral-f32/tiny_mixtral_config.json");
  EXPECT_EQ(mixtral.num_experts, 4);  // num_local_experts
  EXPECT_EQ(mixtral.num_key_value_heads, 1);
}

const char* kMinimal = R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":2,
  "num_attention_heads":4,"intermediate_size":128,"vocab_size":256 REPLACE})";

std::string Minimal(const std::string& extra) {
  std::string s = kMinimal;
  s.replace(s.find("REPLACE"), 7, extra);
  return s;
}

TEST(ModelConfig, MinimalDefaults) {
  auto c = ParseModelConfig(Minimal(""), "min.json");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_FALSE(c->torch_dtype.has_value());
  auto f16 = ParseModelConfig(Minimal(R"(,"dtype":"float16")"), "min.json");
  ASSERT_TRUE(f16.ok());
  EXPECT_EQ(f16->torch_dtype, DType::kF16);
}

TEST(ModelConfig, MissingRequiredKey) {
  auto c = ParseModelConfig(R"({"model_type":"llama","num_hidden_layers":2,"num_attention_heads":4,
                               "intermediate_size":128,"vocab_size":256})",
                            "/cfg/missing.json");
  EXPECT_EQ(c.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(c.status(), "/cfg/missing.json");
  EXPECT_MESSAGE_HAS(c.status(), "hidden_size");
  EXPECT_MESSAGE_HAS(c.status(), "missing");
}

TEST(ModelConfig, WrongTypes) {
  auto str = ParseModelConfig(R"({"model_type":"llama","hidden_size":"64"})", "w.json");
  EXPECT_EQ(str.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(str.status(), "w.json");
  EXPECT_MESSAGE_HAS(str.status(), "hidden_size");
  auto flt = ParseModelConfig(Minimal(R"(,"num_key_value_heads":2.5)"), "w.json");
  EXPECT_EQ(flt.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(flt.status(), "num_key_value_heads");
  auto tie = ParseModelConfig(Minimal(R"(,"tie_word_embeddings":"yes")"), "w.json");
  EXPECT_EQ(tie.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(tie.status(), "tie_word_embeddings");
  auto arch = ParseModelConfig(Minimal(R"(,"architectures":"LlamaForCausalLM")"), "w.json");
  EXPECT_EQ(arch.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(arch.status(), "architectures");
  auto neg = ParseModelConfig(Minimal(R"(,"head_dim":-1)"), "w.json");
  EXPECT_EQ(neg.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(neg.status(), "head_dim");
}

// Grouped-query attention needs the KV heads to divide the query heads (8 KV heads for 4
// query heads was accepted); 0 says its value.
TEST(ModelConfig, KvHeadsMustDivideTheAttentionHeads) {
  auto more = ParseModelConfig(Minimal(R"(,"num_key_value_heads":8)"), "kv.json");
  EXPECT_EQ(more.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(more.status(), "kv.json: key \"num_key_value_heads\": 8 does not divide num_attention_heads 4");
  auto three = ParseModelConfig(Minimal(R"(,"num_key_value_heads":3)"), "kv.json");
  EXPECT_MESSAGE_HAS(three.status(), "3 does not divide num_attention_heads 4");
  auto zero = ParseModelConfig(Minimal(R"(,"num_key_value_heads":0)"), "kv.json");
  EXPECT_MESSAGE_HAS(zero.status(), "key \"num_key_value_heads\": 0 is not positive");
  EXPECT_TRUE(ParseModelConfig(Minimal(R"(,"num_key_value_heads":2)"), "kv.json").ok());
  // A key given twice: the last wins, as transformers (Python's json) reads it; safetensors
  // headers and indexes refuse duplicates instead (MalformedSafetensors.ATensorNamedTwiceIsCorrupt).
  auto twice = ParseModelConfig(Minimal(R"(,"num_key_value_heads":4,"num_key_value_heads":2)"), "kv.json");
  ASSERT_TRUE(twice.ok()) << twice.status().ToString();
  EXPECT_EQ(twice->num_key_value_heads, 2);
}

TEST(ModelConfig, UnknownTorchDtype) {
  auto c = ParseModelConfig(Minimal(R"(,"torch_dtype":"float8")"), "d.json");
  EXPECT_EQ(c.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(c.status(), "torch_dtype");
  EXPECT_MESSAGE_HAS(c.status(), "float8");
}

TEST(ModelConfig, HeadsNotDividingHidden) {
  auto c = ParseModelConfig(R"({"model_type":"llama","hidden_size":64,"num_hidden_layers":2,
                               "num_attention_heads":5,"intermediate_size":128,"vocab_size":256})",
                            "h.json");
  EXPECT_EQ(c.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(c.status(), "head_dim");
}

TEST(ModelConfig, InvalidJsonAndNotObjectAndMissingFile) {
  auto bad = ParseModelConfig("{\"model_type\": ", "broken.json");
  EXPECT_EQ(bad.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(bad.status(), "broken.json");
  auto arr = ParseModelConfig("[]", "arr.json");
  EXPECT_EQ(arr.status().code(), ErrorCode::kCorruptData);
  EXPECT_MESSAGE_HAS(arr.status(), "arr.json");
  auto missing = LoadModelConfig("/nonexistent/dir/config.json");
  EXPECT_EQ(missing.status().code(), ErrorCode::kIoError);
  EXPECT_MESSAGE_HAS(missing.status(), "/nonexistent/dir/config.json");
}

}  // namespace
}  // namespace shardwire
