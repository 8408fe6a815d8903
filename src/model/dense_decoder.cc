// Dense Llama-style decoders: llama, mistral, qwen2, qwen3. Names and shapes follow HF
// transformers modeling_{llama,mistral,qwen2,qwen3}.py (nn.Linear weight = [out, in]).
#include <fmt/format.h>

#include "model/families.h"

namespace shardwire::internal {
namespace {

struct DenseOptions {
  bool qkv_bias = false;  // q/k/v_proj.bias
  bool o_bias = false;    // o_proj.bias
  bool mlp_bias = false;  // gate/up/down_proj.bias
  bool qk_norm = false;   // q_norm/k_norm over head_dim (Qwen3)
};

std::vector<ModelTensor> DescribeDense(const ModelConfig& c, const DenseOptions& o) {
  const DType dt = c.dtype();
  const std::int64_t hidden = c.hidden_size;
  const std::int64_t q_out = c.num_attention_heads * c.head_dim;
  const std::int64_t kv_out = c.num_key_value_heads * c.head_dim;
  const std::int64_t inter = c.intermediate_size;
  std::vector<ModelTensor> t;
  auto add = [&](std::string name, std::vector<std::int64_t> shape, ParallelRole role, int layer) {
    t.push_back(ModelTensor{TensorSpec{std::move(name), dt, std::move(shape)}, role, layer});
  };
  using R = ParallelRole;
  add("model.embed_tokens.weight", {c.vocab_size, hidden}, R::kVocab, -1);
  for (int i = 0; i < static_cast<int>(c.num_hidden_layers); ++i) {
    const std::string p = fmt::format("model.layers.{}.", i);
    add(p + "input_layernorm.weight", {hidden}, R::kReplicated, i);
    for (const auto& [proj, out] : {std::pair{"q_proj", q_out}, std::pair{"k_proj", kv_out},
                                    std::pair{"v_proj", kv_out}}) {
      add(p + "self_attn." + proj + ".weight", {out, hidden}, R::kColumn, i);
      if (o.qkv_bias) add(p + "self_attn." + proj + ".bias", {out}, R::kColumn, i);
    }
    if (o.qk_norm) {
      add(p + "self_attn.q_norm.weight", {c.head_dim}, R::kReplicated, i);
      add(p + "self_attn.k_norm.weight", {c.head_dim}, R::kReplicated, i);
    }
    add(p + "self_attn.o_proj.weight", {hidden, q_out}, R::kRow, i);
    if (o.o_bias) add(p + "self_attn.o_proj.bias", {hidden}, R::kReplicated, i);
    add(p + "post_attention_layernorm.weight", {hidden}, R::kReplicated, i);
    for (const char* proj : {"gate_proj", "up_proj"}) {
      add(p + "mlp." + proj + ".weight", {inter, hidden}, R::kColumn, i);
      if (o.mlp_bias) add(p + "mlp." + proj + ".bias", {inter}, R::kColumn, i);
    }
    add(p + "mlp.down_proj.weight", {hidden, inter}, R::kRow, i);
    if (o.mlp_bias) add(p + "mlp.down_proj.bias", {hidden}, R::kReplicated, i);
  }
  add("model.norm.weight", {hidden}, R::kReplicated, -1);
  if (!c.tie_word_embeddings) add("lm_head.weight", {c.vocab_size, hidden}, R::kVocab, -1);
  return t;
}

}  // namespace

// LlamaAttention: bias=config.attention_bias on q/k/v/o; LlamaMLP: bias=config.mlp_bias.
Result<std::vector<ModelTensor>> DescribeLlama(const ModelConfig& c) {
  return DescribeDense(c, {.qkv_bias = c.attention_bias, .o_bias = c.attention_bias,
                           .mlp_bias = c.mlp_bias});
}

// MistralAttention / MistralMLP: no biases.
Result<std::vector<ModelTensor>> DescribeMistral(const ModelConfig& c) {
  return DescribeDense(c, {});
}

// Qwen2Attention: q/k/v bias=True, o_proj bias=False; Qwen2MLP: no biases.
Result<std::vector<ModelTensor>> DescribeQwen2(const ModelConfig& c) {
  return DescribeDense(c, {.qkv_bias = true});
}

// Qwen3Attention: bias=config.attention_bias on q/k/v/o, RMSNorm q_norm/k_norm of head_dim.
Result<std::vector<ModelTensor>> DescribeQwen3(const ModelConfig& c) {
  return DescribeDense(c, {.qkv_bias = c.attention_bias, .o_bias = c.attention_bias,
                           .qk_norm = true});
}

}  // namespace shardwire::internal
