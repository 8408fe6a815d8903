// Which checkpoint the demo runs on: the one given, the real tiny model in
// ../shared/models, or one generated with a real architecture's shapes.
#pragma once

#include <string>

#include "shardwire/model_description.h"
#include "shardwire/status.h"

namespace shardwire::demo {

/// A checkpoint path and the config.json describing it.
struct DemoCheckpoint {
  std::string checkpoint;
  std::string config;
};

/// The directory holding shared real models: $SHARDWIRE_SHARED_DIR, else the
/// `shared` folder beside the source tree; empty when neither exists.
std::string SharedModelsDir();

/// Describes the model of `config_path` ("tinyllama-1.1b" = built in) with `layers`
/// decoder layers (0 = as configured), without touching any checkpoint.
Result<ModelDescription> DescribeConfig(const std::string& config_path, int layers);

/// Generates (or reuses, when an identical one is already there) a checkpoint with
/// the shapes of `config_path` ("tinyllama-1.1b" names a built-in copy of
/// TinyLlama-1.1B's HF config) and `layers` decoder layers (0 = all), in `work_dir`.
Result<DemoCheckpoint> GenerateDemoCheckpoint(const std::string& config_path, int layers, const std::string& work_dir);

/// Resolves the demo's input: explicit checkpoint (+ config), or --generate, or the
/// real tiny-llama3-bf16, or (without ../shared) a generated 1-layer TinyLlama.
Result<DemoCheckpoint> ResolveDemoCheckpoint(const std::string& checkpoint, const std::string& config,
                                             const std::string& generate, int layers, const std::string& work_dir);

/// Loads the config and checks it against the checkpoint's tensors.
Result<ModelDescription> DescribeDemoModel(const DemoCheckpoint& input);

}  // namespace shardwire::demo
