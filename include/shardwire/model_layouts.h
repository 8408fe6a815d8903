// Layouts of a model's tensors as trainers and inference engines hold them.
//
// Tensor order follows the ModelDescription (embed, layers in order, final norm,
// lm_head), which is also the order shards take in each rank's buffer.
//
// Thread-safety: pure functions.
#pragma once

#include "shardwire/layout.h"
#include "shardwire/model_description.h"
#include "shardwire/status.h"

namespace shardwire {

/// FSDP over `num_ranks` ranks (see MakeFsdpLayout). Errors: num_ranks < 1.
Result<Layout> MakeFsdpLayoutForModel(const ModelDescription& model, int num_ranks);

/// Tensor parallelism as vLLM / SGLang shard a dense model (Megatron-LM style):
/// column-parallel tensors split on dim 0, row-parallel on dim 1, vocab-parallel
/// (embed_tokens, lm_head) on dim 0, the rest replicated; `replicas` engines of `tp`
/// ranks each. Errors (kInvalidArgument, naming the numbers): tp or replicas < 1;
/// attention heads or key/value heads not divisible by tp; a sharded dimension
/// (e.g. vocab or intermediate size) not divisible by tp.
Result<Layout> MakeTpLayoutForModel(const ModelDescription& model, int tp, int replicas);

}  // namespace shardwire
