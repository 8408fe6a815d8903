// mixtral (MixtralForCausalLM). Names and shapes follow HF transformers
// modeling_mixtral.py up to v4.x and every released Mixtral checkpoint: Mistral-style
// attention without biases; in every layer a MixtralSparseMoeBlock with router
// `block_sparse_moe.gate` = Linear(hidden, num_local_experts, bias=False) and experts
// `block_sparse_moe.experts.{e}.w1` (gate, [intermediate, hidden]), `w2` (down, [hidden,
// intermediate]), `w3` (up). Experts use intermediate_size (Mixtral has no
// moe_intermediate_size).
#include "model/families.h"

namespace shardwire::internal {

Status DescribeMixtral(const ModelConfig& c, ModelBuilder* b) {
  using R = ParallelRole;
  SW_ASSIGN_OR_RETURN(const std::int64_t experts, Required(c, "num_local_experts", c.num_experts));
  const GatedMlpNames names{.gate = "w1", .up = "w3", .down = "w2", .gate_up = "gate_up_proj"};

  b->Add("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, R::kVocab, -1);
  for (int i = 0; i < static_cast<int>(c.num_hidden_layers); ++i) {
    const std::string p = LayerPrefix(i);
    b->Add(p + "input_layernorm.weight", {c.hidden_size}, R::kReplicated, i);
    AddGqaAttention(*b, c, p, i, {});
    b->Add(p + "post_attention_layernorm.weight", {c.hidden_size}, R::kReplicated, i);
    b->Linear(p + "block_sparse_moe.gate", experts, c.hidden_size, R::kReplicated, i,
              {.quantizable = false});
    AddRoutedExperts(*b, p + "block_sparse_moe.", experts, c.hidden_size, c.intermediate_size, i,
                     names, /*down_second=*/true);
  }
  b->Add("model.norm.weight", {c.hidden_size}, R::kReplicated, -1);
  if (!c.tie_word_embeddings) b->Add("lm_head.weight", {c.vocab_size, c.hidden_size}, R::kVocab, -1);
  return Status::Ok();
}

}  // namespace shardwire::internal
