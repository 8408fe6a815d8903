// Which checkpoint the demo runs on: the one given, the real tiny model in
// ../shared/models, or one generated with a real architecture's shapes.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "shardwire/model_description.h"
#include "shardwire/status.h"

namespace shardwire::cli {

/// A checkpoint path and the config.json describing it.
struct DemoCheckpoint {
  std::string checkpoint;
  std::string config;
};

/// The directory holding shared real models: $SHARDWIRE_SHARED_DIR, else the
/// `shared` folder beside the source tree; empty when neither exists.
std::string SharedModelsDir();

/// Describes the model of `config_path` ("tinyllama-1.1b" = built in) with `layers`
/// decoder layers (0 = as configured), without touching any checkpoint. With `unquantised`,
/// an FP8 config (quantization_config) is described as its bf16 original, the format RL
/// trainers hold.
Result<ModelDescription> DescribeConfig(const std::string& config_path, int layers, bool unquantised = false);

/// The FP8 block size [out, in] of the config's quantization_config (quant_method "fp8" with
/// weight_block_size), or nullopt. Errors: those of LoadModelConfig.
Result<std::optional<std::array<std::int64_t, 2>>> ConfigFp8BlockSize(const std::string& config_path);

/// Generates (or reuses, when an identical one is already there) a checkpoint with
/// the shapes of `config_path` ("tinyllama-1.1b" names a built-in copy of
/// TinyLlama-1.1B's HF config) and `layers` decoder layers (0 = all), in `work_dir`.
/// With `unquantised`, an FP8 config's bf16 original is generated (see DescribeConfig).
Result<DemoCheckpoint> GenerateDemoCheckpoint(const std::string& config_path, int layers, const std::string& work_dir,
                                              bool unquantised = false);

/// Resolves the demo's input: explicit checkpoint (+ config), or --generate, or the
/// real tiny-llama3-bf16, or (without ../shared) a generated 1-layer TinyLlama.
Result<DemoCheckpoint> ResolveDemoCheckpoint(const std::string& checkpoint, const std::string& config,
                                             const std::string& generate, int layers, const std::string& work_dir,
                                             bool unquantised = false);

/// Loads the config and checks it against the checkpoint's tensors.
Result<ModelDescription> DescribeDemoModel(const DemoCheckpoint& input);

}  // namespace shardwire::cli
