// The model stored in a checkpoint: its HF config applied to its tensors.
//
// Thread-safety: pure function (reads the config file).
#pragma once

#include <string>

#include "shardwire/checkpoint.h"
#include "shardwire/model_description.h"
#include "shardwire/status.h"

namespace shardwire {

/// Describes the model stored in `checkpoint` from the HF config at `config_path` (empty:
/// checkpoint.config_path()). A config without `torch_dtype` — older and tiny configs
/// often omit it — takes the dtype of the checkpoint's `model.embed_tokens.weight`: the
/// checkpoint is the truth about how the weights are stored. Does not compare the two;
/// call CheckCheckpointMatchesModel for that.
/// Errors: kNotFound when there is no config; those of LoadModelConfig and DescribeModel.
Result<ModelDescription> DescribeCheckpointModel(const Checkpoint& checkpoint, std::string config_path = "");

}  // namespace shardwire
