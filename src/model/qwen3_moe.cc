// qwen3_moe (Qwen3MoeForCausalLM, e.g. Qwen3-30B-A3B). Names and shapes follow HF
// transformers modeling_qwen3_moe.py and the real checkpoints: Qwen3MoeAttention is
// Qwen3's (q_norm/k_norm, bias=attention_bias); Qwen3MoeDecoderLayer uses
// Qwen3MoeSparseMoeBlock (router `mlp.gate` = Linear(hidden, num_experts, bias=False) and
// `mlp.experts.{e}.{gate,up,down}_proj` of moe_intermediate_size) when
// `layer not in mlp_only_layers and num_experts > 0 and (layer + 1) % decoder_sparse_step
// == 0`, else the dense Qwen3MoeMLP of intermediate_size.
#include <algorithm>
#include <optional>

#include "model/families.h"

namespace shardwire::internal {

Status DescribeQwen3Moe(const ModelConfig& c, ModelBuilder* b) {
  using R = ParallelRole;
  SW_ASSIGN_OR_RETURN(const std::int64_t experts,
                      Required(c, "num_experts", c.num_experts, /*allow_zero=*/true));
  // Qwen3MoeConfig default decoder_sparse_step = 1.
  SW_ASSIGN_OR_RETURN(const std::int64_t step,
                      Required(c, "decoder_sparse_step", c.decoder_sparse_step.value_or(1)));
  auto is_moe = [&](int i) {
    return experts > 0 && (i + 1) % step == 0 &&
           std::find(c.mlp_only_layers.begin(), c.mlp_only_layers.end(), i) ==
               c.mlp_only_layers.end();
  };
  std::int64_t moe_inter = 0;
  for (int i = 0; i < static_cast<int>(c.num_hidden_layers); ++i) {
    if (is_moe(i)) {
      SW_ASSIGN_OR_RETURN(moe_inter, Required(c, "moe_intermediate_size", c.moe_intermediate_size));
      break;
    }
  }

  b->Add("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, R::kVocab, -1);
  for (int i = 0; i < static_cast<int>(c.num_hidden_layers); ++i) {
    const std::string p = LayerPrefix(i);
    b->Add(p + "input_layernorm.weight", {c.hidden_size}, R::kReplicated, i);
    AddGqaAttention(*b, c, p, i,
                    {.qkv_bias = c.attention_bias, .o_bias = c.attention_bias, .qk_norm = true});
    b->Add(p + "post_attention_layernorm.weight", {c.hidden_size}, R::kReplicated, i);
    if (is_moe(i)) {
      b->Linear(p + "mlp.gate", experts, c.hidden_size, R::kReplicated, i, {.quantizable = false});
      AddRoutedExperts(*b, p + "mlp.", experts, c.hidden_size, moe_inter, i);
    } else {
      AddGatedMlp(*b, p + "mlp.", c.hidden_size, c.intermediate_size, i, false);
    }
  }
  b->Add("model.norm.weight", {c.hidden_size}, R::kReplicated, -1);
  if (!c.tie_word_embeddings) b->Add("lm_head.weight", {c.vocab_size, c.hidden_size}, R::kVocab, -1);
  return Status::Ok();
}

}  // namespace shardwire::internal
