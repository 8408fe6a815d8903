// libFuzzer target for layout strings (MakeLayoutFromString: "fsdp=8", "hsdp=2x8",
// "tp=4,dp=2", ...), which come from command lines, config files and peers.
//
// The first input byte picks the model (even: a dense Llama-style decoder, odd: a
// Qwen3-MoE decoder with 8 experts; fuzz/fuzz_models.h); the rest is the layout string.
//
// Properties checked on every input:
//   * parsing and building never crash, hang, overflow or exhaust memory (ASan, UBSan,
//     libFuzzer's -rss_limit_mb and -timeout);
//   * a rejection is kInvalidArgument (or kUnsupported for a trainer with ep > 1 and
//     tp > 1) with a message (model_layouts.h);
//   * an accepted layout has world_size() >= 1, every rank maps to a rank class, and it
//     holds the model's tensors.
// Dictionary: fuzz/layout_string_fuzzer.dict.
// Fuzz links: shardwire_layout
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz_check.h"
#include "fuzz_models.h"
#include "shardwire/model_config.h"
#include "shardwire/model_description.h"
#include "shardwire/model_layouts.h"

namespace {

constexpr const char* kName = "layout_string_fuzzer";
const shardwire::ModelDescription* g_models[2];

const shardwire::ModelDescription* Describe(std::string_view config_text) {
  auto config = shardwire::ParseModelConfig(config_text, "fuzz_models.h");
  shardwire::fuzz::Check(config.ok(), kName, "built-in config parses");
  auto model = shardwire::DescribeModel(*config);
  shardwire::fuzz::Check(model.ok(), kName, "built-in config describes");
  return new shardwire::ModelDescription(std::move(model).value());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_models[0] = Describe(shardwire::fuzz::kDenseConfig);
  g_models[1] = Describe(shardwire::fuzz::kMoeConfig);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using shardwire::fuzz::Check;
  if (size == 0) return 0;
  const shardwire::ModelDescription& model = *g_models[data[0] & 1];
  const std::string_view spec(reinterpret_cast<const char*>(data + 1), size - 1);
  auto layout = shardwire::MakeLayoutFromString(model, spec);
  if (!layout.ok()) {
    shardwire::fuzz::CheckRejection(layout.status(), kName,
                                    {shardwire::ErrorCode::kInvalidArgument, shardwire::ErrorCode::kUnsupported});
    return 0;
  }
  Check(layout->world_size() >= 1, kName, "world_size >= 1");
  Check(layout->num_rank_classes() >= 1 && layout->num_rank_classes() <= static_cast<std::size_t>(layout->world_size()),
        kName, "1 <= rank classes <= world size");
  std::size_t ranks = 0;
  for (std::size_t c = 0; c < layout->num_rank_classes(); ++c) ranks += layout->ranks_of_class(c).size();
  Check(ranks == static_cast<std::size_t>(layout->world_size()), kName, "every rank is in one class");
  Check(layout->tensors().size() == model.tensors.size(), kName, "the layout holds the model's tensors");
  return 0;
}
