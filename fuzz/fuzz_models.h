// Small model configs (Hugging Face config.json text) that the layout-string and
// plan-codec fuzzers build their models from: a dense Llama-style decoder with grouped
// key/value heads, and a Qwen3-MoE decoder with 8 experts. Sizes are tiny so that one
// fuzz input runs in microseconds; the key names are the real ones of LlamaConfig and
// Qwen3MoeConfig (transformers).
#pragma once

#include <string_view>

namespace shardwire::fuzz {

inline constexpr std::string_view kDenseConfig = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
  "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
  "intermediate_size": 128, "vocab_size": 256, "torch_dtype": "bfloat16"})";

inline constexpr std::string_view kMoeConfig = R"({
  "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 64,
  "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 8,
  "intermediate_size": 128, "moe_intermediate_size": 32, "num_experts": 8,
  "num_experts_per_tok": 2, "vocab_size": 256, "torch_dtype": "bfloat16"})";

}  // namespace shardwire::fuzz
