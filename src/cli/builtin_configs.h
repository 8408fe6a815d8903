// Hugging Face config.json files of real models, built into the binary so that a
// fresh clone without ../shared can still run its demo on real architecture shapes.
#pragma once

#include <string_view>

namespace shardwire::cli {

/// The config.json of TinyLlama/TinyLlama-1.1B-Chat-v1.0 (LlamaForCausalLM: hidden
/// 2048, 22 layers, 32 heads, 4 key/value heads, intermediate 5632, vocab 32000, bf16).
std::string_view TinyLlamaConfigJson();

}  // namespace shardwire::cli
