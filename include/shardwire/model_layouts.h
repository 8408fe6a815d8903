// Layouts of a model's tensors as RL trainers and inference engines hold them.
//
// Engines follow vLLM / SGLang (Megatron-style tensor parallelism):
//  * column-parallel tensors (q/k/v, gate/up, MLA q_b/kv_b) split on dim 0, row-parallel
//    (o_proj, down_proj) on dim 1, vocab-parallel (embed_tokens, lm_head) on dim 0 after
//    padding the vocabulary (vLLM VocabParallelEmbedding: to a multiple of 64, then of
//    tp; padding rows are reserved in the buffer and never sent), the rest replicated;
//  * GQA with fewer key/value heads than TP ranks: each k/v head is replicated on the
//    tp / kv_heads consecutive ranks that share it (vLLM QKVParallelLinear);
//  * fused parameters (qkv_proj = [q; k; v], gate_up_proj = [gate; up], per-expert
//    w13, MLA fused_qkv_a) are held contiguously: each rank's fused tensor is the
//    concatenation of its shards of the parts (see LayoutOptions::fused_groups);
//  * MoE experts under expert parallelism (ep == tp): each routed expert whole on one
//    rank of its stage's TP group, by an expert-to-rank map that need not be contiguous
//    (vLLM's default is linear: expert e on rank e * ep / E); with ep == 1 experts are
//    TP-sharded like dense MLPs; shared experts are dense MLPs;
//  * pipeline stages split the decoder layers as vLLM's get_pp_indices does (even
//    split, the remainder to the stages before the last); embed_tokens on the first
//    stage, final norm, lm_head and MTP layers on the last;
//  * rank = (replica * pp + stage) * tp + tp_rank.
// Trainers follow torchtitan / FSDP2 (mesh order pp, dp_replicate, dp_shard, tp):
//  * FSDP shards dim 0 of each (TP-local) tensor across dp_shard ranks with torch.chunk
//    semantics (FSDP2 + TP shards the TP shard: DTensor's _StridedShard order);
//  * HSDP repeats that over dp_replicate replica groups;
//  * EP for experts (ep > 1) uses ep ranks of each dp_shard group (ep_rank = s % ep):
//    expert e belongs to ep_rank e * ep / E; its FSDP then runs over the dp_shard / ep
//    ranks with that ep_rank, sharding the grouped [E_local, ...] tensor on the expert
//    dimension (whole experts per rank) when E_local >= dp_shard / ep, else each expert
//    on its dim 0 (torchtitan's _experts_shard_placement_fn);
//  * rank = ((stage * dp_replicate + r) * dp_shard + s) * tp + t.
// Tensor order follows the ModelDescription, which is also the order of shards in each
// rank's buffer (fused groups sit where their first part is).
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "shardwire/layout.h"
#include "shardwire/model_description.h"
#include "shardwire/status.h"

namespace shardwire {

struct EngineLayoutOptions {
  int tp = 1;              ///< tensor-parallel ranks per pipeline stage
  int pp = 1;              ///< pipeline stages
  int dp = 1;              ///< engine replicas
  int ep = 1;              ///< 1, or tp: routed experts whole on one rank of the TP group
  bool fuse = true;        ///< hold fused parameters contiguously
  int vocab_padding = 64;  ///< rows: the vocabulary is padded to a multiple (vLLM DEFAULT_VOCAB_PADDING_SIZE)
  /// Optional expert -> EP rank map (size = routed experts, values in [0, ep)); empty =
  /// linear (e * ep / E).
  std::vector<int> expert_to_rank = {};
};

struct TrainerLayoutOptions {
  int dp_replicate = 1;  ///< HSDP replica groups
  int dp_shard = 1;      ///< FSDP ranks per replica group
  int tp = 1;            ///< tensor parallelism
  int ep = 1;            ///< expert parallelism carved out of dp_shard (requires tp == 1)
  int pp = 1;            ///< pipeline stages
};

/// Largest world size (product of all parallel sizes) of a layout built here: 2^20 ranks.
/// Layout strings are untrusted; this keeps the rank arithmetic inside `int` and the
/// rank-to-class table (4 bytes per rank) bounded.
inline constexpr std::int64_t kMaxLayoutRanks = std::int64_t{1} << 20;

/// Largest number of ranks with distinct shards (engine: pp x tp; trainer: pp x fsdp x
/// tp): 2^16. Each such rank class stores a shard per tensor, so this bounds memory.
inline constexpr std::int64_t kMaxLayoutRankClasses = std::int64_t{1} << 16;

/// Inference-engine layout. Errors (kInvalidArgument, naming the numbers): sizes < 1;
/// more than kMaxLayoutRanks ranks or kMaxLayoutRankClasses rank classes;
/// heads not divisible by tp; tp not a multiple of (or divisible by) the key/value heads;
/// ep not 1 or tp; experts not divisible by ep; a bad expert_to_rank map; a sharded
/// dimension (incl. FP8 block-scale rows) not divisible; an FP8 block-quantised weight whose
/// per-rank part is not a multiple of weight_block_size along the split dimension (its
/// ranks' scales would cover other ranks' rows; vLLM refuses it alike); pp > number of layers;
/// a tensor of more than kMaxTensorDims dimensions (a hand-built description).
Result<Layout> MakeEngineLayout(const ModelDescription& model, const EngineLayoutOptions& options);

/// Trainer layout. Errors (kInvalidArgument): sizes < 1; more than kMaxLayoutRanks ranks
/// or kMaxLayoutRankClasses rank classes; tp not dividing heads, key/value heads or a
/// sharded dimension; ep not dividing dp_shard or the expert count; pp > number of
/// layers; a tensor of more than kMaxTensorDims dimensions. kUnsupported: ep > 1 together
/// with tp > 1.
Result<Layout> MakeTrainerLayout(const ModelDescription& model, const TrainerLayoutOptions& options);

/// FSDP over `num_ranks` ranks: MakeTrainerLayout with dp_shard = num_ranks.
Result<Layout> MakeFsdpLayoutForModel(const ModelDescription& model, int num_ranks);

/// `replicas` engines of `tp` ranks: MakeEngineLayout with tp and dp.
Result<Layout> MakeTpLayoutForModel(const ModelDescription& model, int tp, int replicas);

/// Parses a layout string and builds the layout. Trainer layouts name `fsdp=N` or
/// `hsdp=RxS` (optionally with tp, ep, pp); engine layouts use tp, ep, pp and dp
/// (replicas). Examples: "fsdp=8", "hsdp=2x8", "fsdp=64,tp=4", "fsdp=256,ep=8",
/// "tp=4,dp=2", "tp=8,ep=8,dp=16", "pp=2,tp=4".
/// Errors: kInvalidArgument pointing at the offending part (or kUnsupported, see
/// MakeTrainerLayout), e.g.
/// "layout \"tp=4,xp=2\": unknown key \"xp\" at character 6 (keys: fsdp, hsdp, tp, ep, pp, dp)";
/// and the errors of MakeTrainerLayout / MakeEngineLayout.
Result<Layout> MakeLayoutFromString(const ModelDescription& model, std::string_view spec);

}  // namespace shardwire
