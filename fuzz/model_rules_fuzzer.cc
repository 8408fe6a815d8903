// libFuzzer target for model rules files (ModelRules::Parse, then ModelRules::Describe on a
// fixed Llama-shaped config.json): a `--model-rules FILE` comes from a user and is untrusted
// (format: docs/model_rules.md; YAML parsed by yaml-cpp).
//
// Properties checked on every input:
//   * parsing and describing never crash, hang or read outside the input (ASan, UBSan);
//   * a rejected file is kInvalidArgument with a message naming the file
//     ("fuzz.yaml:<line>: ..." or "fuzz.yaml: ...");
//   * an accepted file either describes the config or is rejected with kInvalidArgument /
//     kUnsupported (model_rules.h); a described model has at least one tensor, every tensor
//     has a name, its dims are positive, and total_bytes() is the sum of the tensors' nbytes().
// Seeds: the built-in rules files models/rules/*.yaml (fuzz/run_fuzzer.sh).
// Fuzz links: shardwire_model
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_check.h"
#include "shardwire/model_config.h"
#include "shardwire/model_rules.h"

namespace {

constexpr const char* kName = "model_rules_fuzzer";

// A small Llama-shaped config (2 layers) so that a rules file that accepts it describes few
// tensors and the fuzzer stays fast.
constexpr std::string_view kConfig = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
  "num_hidden_layers": 2, "vocab_size": 256, "torch_dtype": "bfloat16", "tie_word_embeddings": false})";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using shardwire::ErrorCode;
  using shardwire::fuzz::Check;
  using shardwire::fuzz::CheckRejection;
  static const shardwire::ModelConfig config = shardwire::ParseModelConfig(kConfig, "fuzz/config.json").value();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto rules = shardwire::ModelRules::Parse(text, "fuzz.yaml");
  if (!rules.ok()) {
    CheckRejection(rules.status(), kName, {ErrorCode::kInvalidArgument});
    Check(rules.status().message().find("fuzz.yaml") != std::string_view::npos, kName,
          "a rejection names the rules file");
    return 0;
  }
  auto model = rules->Describe(config);
  if (!model.ok()) {
    CheckRejection(model.status(), kName, {ErrorCode::kInvalidArgument, ErrorCode::kUnsupported});
    return 0;
  }
  Check(!model->tensors.empty(), kName, "a described model has a tensor");
  std::uint64_t total = 0;
  for (const auto& t : model->tensors) {
    Check(!t.spec.name.empty(), kName, "every tensor has a name");
    for (std::int64_t d : t.spec.shape) Check(d > 0, kName, "every dim is positive");
    total += t.spec.nbytes();
  }
  Check(total == model->total_bytes(), kName, "total_bytes() is the sum of the tensors' nbytes()");
  return 0;
}
