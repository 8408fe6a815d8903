// deepseek_v2, deepseek_v3 and kimi_k2 (DeepseekV2/V3ForCausalLM; Kimi-K2's config says
// model_type kimi_k2, architectures [DeepseekV3ForCausalLM]). Names and shapes follow the
// modeling_deepseek.py shipped with the checkpoints (and HF transformers'
// modeling_deepseek_v2/v3.py):
//  * multi-head latent attention: q_lora_rank null -> q_proj [heads*(nope+rope), hidden];
//    else q_a_proj [q_lora_rank, hidden] (bias=attention_bias), q_a_layernorm, q_b_proj
//    [heads*(nope+rope), q_lora_rank]; kv_a_proj_with_mqa [kv_lora_rank+rope, hidden]
//    (bias=attention_bias), kv_a_layernorm [kv_lora_rank], kv_b_proj [heads*(nope+v),
//    kv_lora_rank], o_proj [hidden, heads*v] (bias=attention_bias). The low-rank "a"
//    projections are replicated under TP (vLLM ReplicatedLinear), the "b" projections
//    column-parallel, o_proj row-parallel;
//  * layer i is MoE when n_routed_experts is set and i >= first_k_dense_replace and
//    i % moe_layer_freq == 0, else a dense MLP of intermediate_size. MoE: router MoEGate
//    `mlp.gate.weight` [n_routed_experts, hidden] (V3 adds `mlp.gate.e_score_correction_bias`
//    [n_routed_experts], F32 in the real checkpoints), routed experts
//    `mlp.experts.{e}.{gate,up,down}_proj` of moe_intermediate_size, shared experts
//    `mlp.shared_experts.{gate,up,down}_proj` of moe_intermediate_size * n_shared_experts;
//  * DeepSeek-V3 MTP modules (num_nextn_predict_layers): naming from the checkpoint's
//    README_WEIGHTS.md (deepseek-ai/DeepSeek-V3: layer ids appended after the main layers,
//    embed_tokens, enorm, hnorm, eh_proj, a full decoder layer, shared_head) and the
//    tensor names vLLM's deepseek_mtp.py loads: model.layers.{L}.embed_tokens.weight
//    [vocab, hidden], enorm/hnorm [hidden], eh_proj [hidden, 2*hidden] (a plain nn.Linear
//    in vLLM and SGLang, hence replicated), the decoder layer, shared_head.norm [hidden],
//    shared_head.head [vocab, hidden]. embed_tokens and shared_head.head duplicate the main
//    embedding and lm_head in the checkpoint (counted: HF's "685B" = 671B + 14B MTP);
//  * FP8 (quantization_config fp8, weight_block_size): every attention projection and
//    every dense / routed / shared expert MLP Linear is F8_E4M3 with a weight_scale_inv.
//    Not quantised: embeddings, lm_head, norms, the router gate and its bias, and the MTP
//    eh_proj and shared_head.head (vLLM's DeepSeekMTP loads eh_proj into an unquantised
//    nn.Linear that has no weight_scale_inv, so the checkpoint carries none).
#include "model/families.h"

namespace shardwire::internal {
namespace {

struct DeepseekShape {
  std::int64_t nope = 0, rope = 0, v = 0, kv_lora = 0;
  std::int64_t q_lora = 0;           // 0: q_proj without LoRA
  std::int64_t experts = 0;          // 0: every layer dense
  std::int64_t moe_inter = 0;
  std::int64_t shared = 0;           // n_shared_experts, 0 for none
  std::int64_t first_dense = 0;      // first_k_dense_replace
  std::int64_t freq = 1;             // moe_layer_freq
  bool v3 = false;                   // e_score_correction_bias, MTP layers

  bool IsMoe(int layer) const {
    return experts > 0 && layer >= first_dense && layer % freq == 0;
  }
};

void AddMla(const ModelConfig& c, const DeepseekShape& s, const std::string& layer_prefix,
            int layer, ModelBuilder* b) {
  using R = ParallelRole;
  const std::string p = layer_prefix + "self_attn.";
  const std::int64_t heads = c.num_attention_heads;
  const std::int64_t hidden = c.hidden_size;
  const bool bias = c.attention_bias;
  if (s.q_lora > 0) {
    b->Linear(p + "q_a_proj", s.q_lora, hidden, R::kReplicated, layer, {.bias = bias});
    b->Add(p + "q_a_layernorm.weight", {s.q_lora}, R::kReplicated, layer);
    b->Linear(p + "q_b_proj", heads * (s.nope + s.rope), s.q_lora, R::kColumn, layer);
  } else {
    b->Linear(p + "q_proj", heads * (s.nope + s.rope), hidden, R::kColumn, layer);
  }
  b->Linear(p + "kv_a_proj_with_mqa", s.kv_lora + s.rope, hidden, R::kReplicated, layer,
            {.bias = bias});
  b->Add(p + "kv_a_layernorm.weight", {s.kv_lora}, R::kReplicated, layer);
  b->Linear(p + "kv_b_proj", heads * (s.nope + s.v), s.kv_lora, R::kColumn, layer);
  b->Linear(p + "o_proj", hidden, heads * s.v, R::kRow, layer, {.bias = bias});
  if (s.q_lora > 0) {
    b->Fuse(p + "fused_qkv_a_proj_with_mqa", {p + "q_a_proj", p + "kv_a_proj_with_mqa"}, bias);
  }
}

// input_layernorm, attention, post_attention_layernorm, MLP of decoder layer `layer`.
void AddDecoderLayer(const ModelConfig& c, const DeepseekShape& s, int layer, ModelBuilder* b) {
  using R = ParallelRole;
  const std::string p = LayerPrefix(layer);
  const std::int64_t hidden = c.hidden_size;
  b->Add(p + "input_layernorm.weight", {hidden}, R::kReplicated, layer);
  AddMla(c, s, p, layer, b);
  b->Add(p + "post_attention_layernorm.weight", {hidden}, R::kReplicated, layer);
  if (!s.IsMoe(layer)) {
    AddGatedMlp(*b, p + "mlp.", hidden, c.intermediate_size, layer, false);
    return;
  }
  b->Linear(p + "mlp.gate", s.experts, hidden, R::kReplicated, layer, {.quantizable = false});
  if (s.v3) b->Add(p + "mlp.gate.e_score_correction_bias", DType::kF32, {s.experts}, R::kReplicated, layer);
  AddRoutedExperts(*b, p + "mlp.", s.experts, hidden, s.moe_inter, layer);
  if (s.shared > 0) {
    b->set_shared_expert(true);
    AddGatedMlp(*b, p + "mlp.shared_experts.", hidden, s.moe_inter * s.shared, layer, false);
    b->set_shared_expert(false);
  }
}

Status DescribeDeepseek(const ModelConfig& c, bool v3, ModelBuilder* b) {
  using R = ParallelRole;
  DeepseekShape s;
  s.v3 = v3;
  SW_ASSIGN_OR_RETURN(s.nope, Required(c, "qk_nope_head_dim", c.qk_nope_head_dim));
  SW_ASSIGN_OR_RETURN(s.rope, Required(c, "qk_rope_head_dim", c.qk_rope_head_dim));
  SW_ASSIGN_OR_RETURN(s.v, Required(c, "v_head_dim", c.v_head_dim));
  SW_ASSIGN_OR_RETURN(s.kv_lora, Required(c, "kv_lora_rank", c.kv_lora_rank));
  if (c.q_lora_rank.has_value()) {
    SW_ASSIGN_OR_RETURN(s.q_lora, Required(c, "q_lora_rank", c.q_lora_rank));
  }
  s.experts = c.num_experts.value_or(0);
  s.shared = c.n_shared_experts.value_or(0);
  s.first_dense = c.first_k_dense_replace.value_or(0);
  SW_ASSIGN_OR_RETURN(s.freq, Required(c, "moe_layer_freq", c.moe_layer_freq.value_or(1)));
  const int mtp = v3 ? static_cast<int>(c.num_nextn_predict_layers.value_or(0)) : 0;
  const int layers = static_cast<int>(c.num_hidden_layers);
  for (int i = 0; i < layers + mtp; ++i) {
    if (s.IsMoe(i)) {
      SW_ASSIGN_OR_RETURN(s.moe_inter, Required(c, "moe_intermediate_size", c.moe_intermediate_size));
      break;
    }
  }

  const std::int64_t hidden = c.hidden_size;
  b->Add("model.embed_tokens.weight", {c.vocab_size, hidden}, R::kVocab, -1);
  for (int i = 0; i < layers; ++i) AddDecoderLayer(c, s, i, b);
  b->Add("model.norm.weight", {hidden}, R::kReplicated, -1);
  if (!c.tie_word_embeddings) b->Add("lm_head.weight", {c.vocab_size, hidden}, R::kVocab, -1);
  for (int l = layers; l < layers + mtp; ++l) {
    const std::string p = LayerPrefix(l);
    b->Add(p + "embed_tokens.weight", {c.vocab_size, hidden}, R::kVocab, l);
    b->Add(p + "enorm.weight", {hidden}, R::kReplicated, l);
    b->Add(p + "hnorm.weight", {hidden}, R::kReplicated, l);
    b->Linear(p + "eh_proj", hidden, 2 * hidden, R::kReplicated, l, {.quantizable = false});
    AddDecoderLayer(c, s, l, b);
    b->Add(p + "shared_head.norm.weight", {hidden}, R::kReplicated, l);
    b->Add(p + "shared_head.head.weight", {c.vocab_size, hidden}, R::kVocab, l);
  }
  return Status::Ok();
}

}  // namespace

Status DescribeDeepseekV2(const ModelConfig& c, ModelBuilder* b) {
  return DescribeDeepseek(c, /*v3=*/false, b);
}

Status DescribeDeepseekV3(const ModelConfig& c, ModelBuilder* b) {
  return DescribeDeepseek(c, /*v3=*/true, b);
}

}  // namespace shardwire::internal
