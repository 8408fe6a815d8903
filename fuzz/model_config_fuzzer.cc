// libFuzzer target for config.json parsing (ParseModelConfig) and the model description
// built from it (DescribeModel): a config.json comes from a checkpoint folder or a peer
// and is untrusted.
//
// Properties checked on every input:
//   * parsing never crashes, hangs or reads outside the input (ASan, UBSan);
//   * a rejected config is kCorruptData with a message (model_config.h);
//   * an accepted config either describes a model or is rejected with kUnsupported /
//     kInvalidArgument (model_description.h); a described model has at least one tensor,
//     every tensor has a name and non-negative dims, and total_bytes() is the sum of the
//     tensors' nbytes().
// Seeds: the config.json files of ../shared/models (see fuzz/run_fuzzer.sh); dictionary:
// fuzz/model_config_fuzzer.dict (the keys ModelConfig reads).
// Fuzz links: shardwire_model
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_check.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"

namespace {
constexpr const char* kName = "model_config_fuzzer";
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using shardwire::ErrorCode;
  using shardwire::fuzz::Check;
  using shardwire::fuzz::CheckRejection;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = shardwire::ParseModelConfig(text, "fuzz/config.json");
  if (!config.ok()) {
    CheckRejection(config.status(), kName, {ErrorCode::kCorruptData});
    return 0;
  }
  // Describing a real DeepSeek-V3 (92k tensors) takes seconds under the sanitizers, so
  // layer and expert counts are clamped (4 layers, 1 MTP layer, 16 experts) to keep the
  // fuzzer fast; the bounds on large counts have their own tests
  // (tests/model/model_description_test.cc, DescribeModel.RejectsSizesBeyondTheLimits).
  if (config->num_hidden_layers > 4) config->num_hidden_layers = 4;
  if (config->num_nextn_predict_layers.value_or(0) > 1) config->num_nextn_predict_layers = 1;
  if (config->num_experts.value_or(0) > 16) config->num_experts = 16;
  auto model = shardwire::DescribeModel(*config);
  if (!model.ok()) {
    CheckRejection(model.status(), kName, {ErrorCode::kUnsupported, ErrorCode::kInvalidArgument});
    return 0;
  }
  Check(!model->tensors.empty(), kName, "a described model has tensors");
  std::uint64_t sum = 0;
  for (const auto& t : model->tensors) {
    Check(!t.spec.name.empty(), kName, "every tensor has a name");
    for (std::int64_t d : t.spec.shape) Check(d >= 0, kName, "dims are non-negative");
    sum += t.spec.nbytes();
  }
  Check(sum == model->total_bytes(), kName, "total_bytes is the sum of nbytes");
  return 0;
}
