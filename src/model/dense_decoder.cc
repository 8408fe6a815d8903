// Dense Llama-style decoders: llama, mistral, qwen2, qwen3. Names and shapes follow HF
// transformers modeling_{llama,mistral,qwen2,qwen3}.py (nn.Linear weight = [out, in]).
#include "model/families.h"

namespace shardwire::internal {
namespace {

struct DenseOptions {
  GqaOptions attention;
  bool mlp_bias = false;  // gate/up/down_proj.bias
};

Status DescribeDense(const ModelConfig& c, const DenseOptions& o, ModelBuilder* b) {
  using R = ParallelRole;
  b->Add("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, R::kVocab, -1);
  for (int i = 0; i < static_cast<int>(c.num_hidden_layers); ++i) {
    const std::string p = LayerPrefix(i);
    b->Add(p + "input_layernorm.weight", {c.hidden_size}, R::kReplicated, i);
    AddGqaAttention(*b, c, p, i, o.attention);
    b->Add(p + "post_attention_layernorm.weight", {c.hidden_size}, R::kReplicated, i);
    AddGatedMlp(*b, p + "mlp.", c.hidden_size, c.intermediate_size, i, o.mlp_bias);
  }
  b->Add("model.norm.weight", {c.hidden_size}, R::kReplicated, -1);
  if (!c.tie_word_embeddings) b->Add("lm_head.weight", {c.vocab_size, c.hidden_size}, R::kVocab, -1);
  return Status::Ok();
}

}  // namespace

// LlamaAttention: bias=config.attention_bias on q/k/v/o; LlamaMLP: bias=config.mlp_bias.
Status DescribeLlama(const ModelConfig& c, ModelBuilder* b) {
  return DescribeDense(c, {.attention = {.qkv_bias = c.attention_bias, .o_bias = c.attention_bias},
                           .mlp_bias = c.mlp_bias},
                       b);
}

// MistralAttention / MistralMLP: no biases.
Status DescribeMistral(const ModelConfig& c, ModelBuilder* b) { return DescribeDense(c, {}, b); }

// Qwen2Attention: q/k/v bias=True, o_proj bias=False; Qwen2MLP: no biases.
Status DescribeQwen2(const ModelConfig& c, ModelBuilder* b) {
  return DescribeDense(c, {.attention = {.qkv_bias = true}}, b);
}

// Qwen3Attention: bias=config.attention_bias on q/k/v/o, RMSNorm q_norm/k_norm of head_dim.
Status DescribeQwen3(const ModelConfig& c, ModelBuilder* b) {
  return DescribeDense(c, {.attention = {.qkv_bias = c.attention_bias, .o_bias = c.attention_bias,
                                         .qk_norm = true}},
                       b);
}

}  // namespace shardwire::internal
