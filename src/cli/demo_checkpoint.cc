#include "cli/demo_checkpoint.h"

#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "cli/builtin_configs.h"
#include "shardwire/checkpoint.h"
#include "shardwire/checkpoint_generator.h"
#include "shardwire/checkpoint_model.h"
#include "shardwire/model_config.h"

namespace shardwire::cli {
namespace fs = std::filesystem;

namespace {
constexpr const char* kBuiltinTinyLlama = "tinyllama-1.1b";
constexpr const char* kDefaultRealModel = "tiny-llama3-bf16";
}  // namespace

std::string SharedModelsDir() {
  std::error_code ec;
  if (const char* env = std::getenv("SHARDWIRE_SHARED_DIR"); env != nullptr && *env != '\0') {
    if (fs::is_directory(fs::path(env) / "models", ec)) return (fs::path(env) / "models").string();
  }
  const fs::path beside_source = fs::path(SHARDWIRE_SOURCE_DIR).parent_path() / "shared" / "models";
  if (fs::is_directory(beside_source, ec)) return beside_source.string();
  return "";
}

namespace {
Result<ModelConfig> LoadDemoConfig(const std::string& config_path) {
  return config_path == kBuiltinTinyLlama ? ParseModelConfig(TinyLlamaConfigJson(), "built-in TinyLlama-1.1B config")
                                          : LoadModelConfig(config_path);
}
}  // namespace

Result<std::optional<std::array<std::int64_t, 2>>> ConfigFp8BlockSize(const std::string& config_path) {
  SW_ASSIGN_OR_RETURN(const ModelConfig config, LoadDemoConfig(config_path));
  if (config.quant_method == "fp8" && config.fp8_block_size) return config.fp8_block_size;
  return std::optional<std::array<std::int64_t, 2>>{};
}

Result<ModelDescription> DescribeConfig(const std::string& config_path, int layers, bool unquantised) {
  Result<ModelConfig> config = LoadDemoConfig(config_path);
  if (!config.ok()) return config.status();
  if (unquantised) {
    config->quant_method.clear();
    config->fp8_block_size.reset();
  }
  SW_ASSIGN_OR_RETURN(ModelDescription model, DescribeModel(*config));
  if (layers > 0) return WithLayers(model, layers);
  return model;
}

Result<DemoCheckpoint> GenerateDemoCheckpoint(const std::string& config_path, int layers, const std::string& work_dir,
                                              bool unquantised) {
  SW_ASSIGN_OR_RETURN(const ModelDescription model, DescribeConfig(config_path, layers, unquantised));
  // Named after the config's folder (e.g. "Llama-3.1-8B") and the layer count.
  const std::string source = config_path == kBuiltinTinyLlama
                                 ? std::string("TinyLlama-1.1B")
                                 : fs::absolute(config_path).parent_path().filename().string();
  const fs::path dir =
      fs::path(work_dir) / fmt::format("{}-{}L{}", source, model.config.num_hidden_layers, unquantised ? "-bf16" : "");
  DemoCheckpoint out{(dir / "model.safetensors").string(), (dir / "config.json").string()};
  std::error_code ec;
  if (fs::exists(out.checkpoint, ec) && fs::exists(out.config, ec)) {
    auto existing = Checkpoint::Open(out.checkpoint);
    if (existing.ok() && existing->total_bytes() == model.total_bytes()) return out;  // reuse
  }
  fmt::print("generating a {:.2f} GB checkpoint with {}'s shapes ({} layers) in {}\n",
             static_cast<double>(model.total_bytes()) / 1e9, source, model.config.num_hidden_layers, dir.string());
  std::fflush(stdout);
  SW_RETURN_IF_ERROR(GenerateCheckpointDirectory(model, dir.string()));
  return out;
}

Result<DemoCheckpoint> ResolveDemoCheckpoint(const std::string& checkpoint, const std::string& config,
                                             const std::string& generate, int layers, const std::string& work_dir,
                                             bool unquantised) {
  if (!generate.empty()) return GenerateDemoCheckpoint(generate, layers, work_dir, unquantised);
  if (!checkpoint.empty()) {
    std::error_code ec;
    if (!fs::exists(checkpoint, ec)) return NotFound(fmt::format("checkpoint {} does not exist", checkpoint));
    return DemoCheckpoint{checkpoint, config};
  }
  const std::string shared = SharedModelsDir();
  if (!shared.empty() && fs::is_directory(fs::path(shared) / kDefaultRealModel)) {
    return DemoCheckpoint{(fs::path(shared) / kDefaultRealModel).string(), config};
  }
  fmt::print("no ../shared/models here: using a generated checkpoint with TinyLlama-1.1B shapes\n");
  return GenerateDemoCheckpoint(kBuiltinTinyLlama, 1, work_dir);
}

Result<ModelDescription> DescribeDemoModel(const DemoCheckpoint& input) {
  SW_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(input.checkpoint));
  SW_ASSIGN_OR_RETURN(ModelDescription model, DescribeCheckpointModel(checkpoint, input.config));
  SW_RETURN_IF_ERROR(CheckCheckpointMatchesModel(model, checkpoint.tensors(), input.checkpoint));
  return model;
}

}  // namespace shardwire::cli
