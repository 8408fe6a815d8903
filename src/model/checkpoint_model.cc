#include "shardwire/checkpoint_model.h"

#include <fmt/format.h>

#include "shardwire/model_config.h"

namespace shardwire {

Result<ModelDescription> DescribeCheckpointModel(const Checkpoint& checkpoint, std::string config_path) {
  if (config_path.empty()) config_path = checkpoint.config_path();
  if (config_path.empty()) {
    return NotFound(fmt::format("no config.json beside checkpoint {}; pass one explicitly", checkpoint.path()));
  }
  SW_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(config_path));
  if (!config.torch_dtype.has_value()) {
    if (auto embed = checkpoint.Get("model.embed_tokens.weight"); embed.ok()) config.torch_dtype = embed->spec.dtype;
  }
  return DescribeModel(config);
}

}  // namespace shardwire
