#include "shardwire/model_layouts.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>

#include "core/huge_page_memory.h"

namespace shardwire {
namespace {

using Classes = std::vector<std::vector<ShardEntry>>;

std::vector<TensorSpec> Specs(const ModelDescription& model) {
  std::vector<TensorSpec> specs;
  specs.reserve(model.tensors.size());
  for (const ModelTensor& t : model.tensors) specs.push_back(t.spec);
  return specs;
}

std::int64_t RoutedExperts(const ModelDescription& model) { return model.config.num_experts.value_or(0); }

// Layers including MTP layers (numbered after the main ones).
int DecoderLayers(const ModelDescription& model) { return static_cast<int>(model.config.num_hidden_layers); }

// vLLM get_pp_indices: even split; the remainder goes to the stages before the last.
std::vector<int> StageOfLayer(int layers, int pp) {
  std::vector<int> sizes(static_cast<std::size_t>(pp), layers / pp);
  for (int i = 2; i < (layers % pp) + 2; ++i) sizes[static_cast<std::size_t>(pp - i)] += 1;
  std::vector<int> stage;
  for (int s = 0; s < pp; ++s)
    stage.insert(stage.end(), static_cast<std::size_t>(sizes[static_cast<std::size_t>(s)]), s);
  return stage;
}

int PipelineStage(const ModelTensor& t, const std::vector<int>& stage_of_layer, int pp) {
  if (t.layer >= 0 && static_cast<std::size_t>(t.layer) < stage_of_layer.size()) {
    return stage_of_layer[static_cast<std::size_t>(t.layer)];
  }
  if (t.layer < 0 && t.spec.name.find("embed_tokens") != std::string::npos) return 0;
  return pp - 1;  // final norm, lm_head, MTP layers
}

bool IsKeyValueProjection(const std::string& name) {
  return name.find(".k_proj.") != std::string::npos || name.find(".v_proj.") != std::string::npos;
}

Status CheckSizes(std::initializer_list<std::pair<const char*, int>> sizes) {
  for (const auto& [name, value] : sizes) {
    if (value < 1) return InvalidArgument(fmt::format("{} must be >= 1, got {}", name, value));
  }
  return Status::Ok();
}

// Every tensor fits a box (kMaxTensorDims): a hand-built description may hold more (the model
// layer's checkpoint and rules readers refuse them already).
Status CheckModelDims(const ModelDescription& model) {
  for (const ModelTensor& t : model.tensors) SW_RETURN_IF_ERROR(CheckTensorDims({&t.spec, 1}, "layout"));
  return Status::Ok();
}

// world = product of all sizes, classes = product of the sizes that give ranks distinct
// shards; computed in 64 bits (each size is an int) and bounded before anything is built.
Status CheckRankCounts(std::initializer_list<int> world_sizes, std::initializer_list<int> class_sizes) {
  std::int64_t world = 1, classes = 1;
  for (int v : world_sizes) world = std::min<std::int64_t>(world * v, kMaxLayoutRanks + 1);
  for (int v : class_sizes) classes = std::min<std::int64_t>(classes * v, kMaxLayoutRankClasses + 1);
  if (world > kMaxLayoutRanks) {
    return InvalidArgument(fmt::format("the layout has more than {} ranks", kMaxLayoutRanks));
  }
  if (classes > kMaxLayoutRankClasses) {
    return InvalidArgument(fmt::format("the layout has more than {} ranks with distinct shards (pp x fsdp x tp)",
                                       kMaxLayoutRankClasses));
  }
  return Status::Ok();
}

Status CheckPipeline(const ModelDescription& model, int pp) {
  if (pp > DecoderLayers(model)) {
    return InvalidArgument(fmt::format("{} pipeline stages for {} decoder layers", pp, DecoderLayers(model)));
  }
  return Status::Ok();
}

Status CheckHeads(const ModelConfig& c, int tp, bool allow_kv_replication) {
  // A config that names no heads (0, ModelConfig) passes both checks: its tensors' roles alone say
  // what TP splits, each split checked per tensor.
  if (c.num_attention_heads % tp != 0) {
    return InvalidArgument(fmt::format("TP size {} does not divide the {} attention heads of {}", tp,
                                       c.num_attention_heads, c.model_type));
  }
  const std::int64_t kv = c.num_key_value_heads;
  const bool divides = kv % tp == 0;
  const bool replicates = allow_kv_replication && kv > 0 && kv < tp && tp % kv == 0;
  if (!divides && !replicates) {
    return InvalidArgument(fmt::format("TP size {} does not divide the {} key/value heads of {}{}", tp, kv,
                                       c.model_type, allow_kv_replication ? " (nor is it a multiple of them)" : ""));
  }
  return Status::Ok();
}

// Even split of `dim` into `parts`; part `index`.
Result<Box> EvenSplit(const TensorSpec& spec, Box box, int dim, int parts, int index) {
  const auto d = static_cast<std::size_t>(dim);
  if (box.shape[d] % parts != 0) {
    return InvalidArgument(
        fmt::format("{}: dim {} of size {} is not divisible by {}", ToString(spec), dim, box.shape[d], parts));
  }
  const std::int64_t part = box.shape[d] / parts;
  box.offset[d] += part * index;
  box.shape[d] = part;
  return box;
}

// The TP shard of a dense (non-expert or TP-sharded expert) tensor on tp_rank.
// Engines pad the vocabulary and replicate k/v heads when there are fewer than tp.
Result<LocalShard> TensorParallelShard(const ModelDescription& model, const ModelTensor& t, int tp, int tp_rank,
                                       bool engine, int vocab_padding) {
  const TensorSpec& spec = t.spec;
  Box whole = WholeBox(spec.shape);
  if (tp == 1 || t.role == ParallelRole::kReplicated || spec.shape.empty()) return LocalShard(whole);
  const std::uint64_t esize = DTypeSize(spec.dtype);
  if (t.role == ParallelRole::kVocab && engine && t.scale_of.empty()) {
    const std::int64_t vocab = spec.shape[0];
    std::int64_t padded = (vocab + vocab_padding - 1) / vocab_padding * vocab_padding;
    padded = (padded + tp - 1) / tp * tp;
    const std::int64_t per_rank = padded / tp;
    const std::int64_t begin = std::min(vocab, per_rank * tp_rank);
    const std::int64_t end = std::min(vocab, per_rank * (tp_rank + 1));
    Box box = whole;
    box.offset[0] = begin;
    box.shape[0] = end - begin;
    const std::uint64_t row_bytes =
        static_cast<std::uint64_t>(whole.numel() / std::max<std::int64_t>(vocab, 1)) * esize;
    return LocalShard(box, static_cast<std::uint64_t>(per_rank) * row_bytes, 0);
  }
  const int dim = ShardDim(t.role);
  const std::int64_t kv = model.config.num_key_value_heads;
  Box box;
  if (engine && t.role == ParallelRole::kColumn && IsKeyValueProjection(spec.name) && kv > 0 && kv < tp) {
    // GQA: kv head h is replicated on the tp / kv ranks that share it.
    SW_ASSIGN_OR_RETURN(box, EvenSplit(spec, whole, 0, static_cast<int>(kv), tp_rank / (tp / static_cast<int>(kv))));
  } else {
    SW_ASSIGN_OR_RETURN(box, EvenSplit(spec, whole, dim, tp, tp_rank));
  }
  // An FP8 block-quantised weight is split on whole blocks: a rank's weight_scale_inv rows
  // (or columns) then cover exactly its own weight rows (columns). Otherwise both splits are
  // even yet disagree (456 rows at tp=2: 228 rows per rank, but scale rows [2, 4) start at
  // row 256), and the engine would dequantise rows with another block's scale. vLLM refuses
  // the same engine (Fp8LinearMethod: "output_size_per_partition % block_n", and
  // "input_size_per_partition % block_k"). Checked on the weight; its scale follows it.
  const std::size_t rank_of_tensor = spec.shape.size();
  if (engine && spec.dtype == DType::kF8E4M3 && t.scale_of.empty() && model.config.fp8_block_size &&
      rank_of_tensor >= 2 && static_cast<std::size_t>(dim) + 2 >= rank_of_tensor) {
    const std::int64_t block = (*model.config.fp8_block_size)[static_cast<std::size_t>(dim) + 2 - rank_of_tensor];
    const std::int64_t part = box.shape[static_cast<std::size_t>(dim)];
    if (block > 0 && part % block != 0) {
      return InvalidArgument(fmt::format(
          "{}: tp={} gives each rank {} of dim {}, not a multiple of the FP8 block size {} (weight_block_size): a "
          "rank's weight_scale_inv would cover another rank's rows; choose a TP size that splits whole blocks",
          ToString(spec), tp, part, dim, block));
    }
  }
  return LocalShard(box);
}

Result<std::vector<int>> ExpertToRank(const EngineLayoutOptions& o, std::int64_t experts) {
  if (!o.expert_to_rank.empty()) {
    if (static_cast<std::int64_t>(o.expert_to_rank.size()) != experts) {
      return InvalidArgument(
          fmt::format("expert map lists {} experts, the model has {}", o.expert_to_rank.size(), experts));
    }
    for (std::size_t e = 0; e < o.expert_to_rank.size(); ++e) {
      if (o.expert_to_rank[e] < 0 || o.expert_to_rank[e] >= o.ep) {
        return InvalidArgument(
            fmt::format("expert map sends expert {} to rank {}, outside ep={}", e, o.expert_to_rank[e], o.ep));
      }
    }
    return o.expert_to_rank;
  }
  std::vector<int> map(static_cast<std::size_t>(experts));
  for (std::int64_t e = 0; e < experts; ++e) map[static_cast<std::size_t>(e)] = static_cast<int>(e * o.ep / experts);
  return map;
}

std::vector<std::vector<std::uint32_t>> FusedGroups(const ModelDescription& model) {
  std::map<std::string_view, std::uint32_t> index;
  for (std::uint32_t t = 0; t < model.tensors.size(); ++t) index[model.tensors[t].spec.name] = t;
  std::vector<std::vector<std::uint32_t>> groups;
  for (const FusedParameter& f : model.fused) {
    std::vector<std::uint32_t> group;
    for (const std::string& part : f.parts) {
      auto it = index.find(part);
      if (it != index.end()) group.push_back(it->second);
    }
    if (group.size() == f.parts.size() && group.size() > 1) groups.push_back(std::move(group));
  }
  return groups;
}

}  // namespace

Result<Layout> MakeEngineLayout(const ModelDescription& model, const EngineLayoutOptions& o) {
  SW_RETURN_IF_ERROR(CheckSizes({{"TP size", o.tp},
                                 {"pipeline stages", o.pp},
                                 {"engine replicas", o.dp},
                                 {"EP size", o.ep},
                                 {"vocab padding", o.vocab_padding}}));
  SW_RETURN_IF_ERROR(CheckRankCounts({o.dp, o.pp, o.tp}, {o.pp, o.tp}));
  SW_RETURN_IF_ERROR(CheckModelDims(model));
  SW_RETURN_IF_ERROR(CheckHeads(model.config, o.tp, /*allow_kv_replication=*/true));
  SW_RETURN_IF_ERROR(CheckPipeline(model, o.pp));
  const std::int64_t experts = RoutedExperts(model);
  if (o.ep != 1 && o.ep != o.tp) {
    return InvalidArgument(fmt::format("engine EP size {} must be 1 or equal to the TP size {}", o.ep, o.tp));
  }
  std::vector<int> expert_rank;
  if (o.ep > 1) {
    if (experts == 0)
      return InvalidArgument(fmt::format("ep={} for {}, which has no experts", o.ep, model.config.model_type));
    if (experts % o.ep != 0) {
      return InvalidArgument(fmt::format("EP size {} does not divide the {} routed experts", o.ep, experts));
    }
    SW_ASSIGN_OR_RETURN(expert_rank, ExpertToRank(o, experts));
  }
  const std::vector<int> stage_of_layer = StageOfLayer(DecoderLayers(model), o.pp);
  // Replicas share their shards: rank (replica * pp + stage) * tp + tp_rank is in class
  // stage * tp + tp_rank.
  const int world = o.dp * o.pp * o.tp;
  Classes classes(static_cast<std::size_t>(o.pp * o.tp));
  // Each class's entries in one buffer of its final size, in 2 MiB pages: Kimi-K2 at tp=8 is
  // 1.1 million entries (150 MB), whose growth by doubling and first touches of 4 KiB pages were
  // most of the layout's time on a shadow-paging host (core/huge_page_memory.h;
  // docs/benchmarks.md, "Planner at scale").
  {
    std::vector<std::size_t> entries_per_class(classes.size(), 0);
    for (const ModelTensor& t : model.tensors) {
      const int stage = PipelineStage(t, stage_of_layer, o.pp);
      if (t.expert >= 0 && o.ep > 1) {
        ++entries_per_class[static_cast<std::size_t>(stage * o.tp + expert_rank[static_cast<std::size_t>(t.expert)])];
      } else {
        for (int tp_rank = 0; tp_rank < o.tp; ++tp_rank)
          ++entries_per_class[static_cast<std::size_t>(stage * o.tp + tp_rank)];
      }
    }
    for (std::size_t c = 0; c < classes.size(); ++c) {
      classes[c].reserve(entries_per_class[c]);
      AdviseHugePages(classes[c].data(), entries_per_class[c] * sizeof(ShardEntry));
    }
  }
  for (std::uint32_t i = 0; i < model.tensors.size(); ++i) {
    const ModelTensor& t = model.tensors[i];
    const int stage = PipelineStage(t, stage_of_layer, o.pp);
    for (int tp_rank = 0; tp_rank < o.tp; ++tp_rank) {
      auto& entries = classes[static_cast<std::size_t>(stage * o.tp + tp_rank)];
      if (t.expert >= 0 && o.ep > 1) {
        if (expert_rank[static_cast<std::size_t>(t.expert)] == tp_rank) {
          entries.push_back({i, LocalShard(WholeBox(t.spec.shape))});
        }
      } else {
        SW_ASSIGN_OR_RETURN(LocalShard shard, TensorParallelShard(model, t, o.tp, tp_rank, true, o.vocab_padding));
        entries.push_back({i, std::move(shard)});
      }
    }
  }
  std::vector<std::uint32_t> class_of_rank(static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r)
    class_of_rank[static_cast<std::size_t>(r)] = static_cast<std::uint32_t>(r % (o.pp * o.tp));
  std::string description = fmt::format("tp={}", o.tp);
  if (o.ep > 1) description += fmt::format(",ep={}", o.ep);
  if (o.pp > 1) description = fmt::format("pp={},", o.pp) + description;
  if (o.dp > 1) description += fmt::format(",dp={}", o.dp);
  LayoutOptions layout_options;
  if (o.fuse) layout_options.fused_groups = FusedGroups(model);
  return Layout::FromRankClasses(std::move(description), Specs(model), std::move(classes), std::move(class_of_rank),
                                 layout_options);
}

Result<Layout> MakeTrainerLayout(const ModelDescription& model, const TrainerLayoutOptions& o) {
  SW_RETURN_IF_ERROR(CheckSizes({{"HSDP replica groups", o.dp_replicate},
                                 {"FSDP size", o.dp_shard},
                                 {"TP size", o.tp},
                                 {"EP size", o.ep},
                                 {"pipeline stages", o.pp}}));
  SW_RETURN_IF_ERROR(CheckRankCounts({o.pp, o.dp_replicate, o.dp_shard, o.tp}, {o.pp, o.dp_shard, o.tp}));
  SW_RETURN_IF_ERROR(CheckModelDims(model));
  if (o.tp > 1) SW_RETURN_IF_ERROR(CheckHeads(model.config, o.tp, /*allow_kv_replication=*/false));
  SW_RETURN_IF_ERROR(CheckPipeline(model, o.pp));
  const std::int64_t experts = RoutedExperts(model);
  if (o.ep > 1) {
    if (o.tp > 1) return Unsupported("trainer layouts with both ep > 1 and tp > 1 are not supported");
    if (o.dp_shard % o.ep != 0) {
      return InvalidArgument(fmt::format("EP size {} does not divide the FSDP size {}", o.ep, o.dp_shard));
    }
    if (experts == 0)
      return InvalidArgument(fmt::format("ep={} for {}, which has no experts", o.ep, model.config.model_type));
    if (experts % o.ep != 0) {
      return InvalidArgument(fmt::format("EP size {} does not divide the {} routed experts of {}", o.ep, experts,
                                         model.config.model_type));
    }
  }
  const std::vector<int> stage_of_layer = StageOfLayer(DecoderLayers(model), o.pp);
  const int world = o.pp * o.dp_replicate * o.dp_shard * o.tp;
  const int fsdp_in_ep = o.dp_shard / o.ep;                          // FSDP ranks per EP rank
  const std::int64_t local_experts = o.ep > 1 ? experts / o.ep : 0;  // experts per EP rank
  // HSDP replica groups share their shards: rank ((stage * R + r) * S + s) * T + t is in
  // class (stage * S + s) * T + t.
  Classes classes(static_cast<std::size_t>(o.pp * o.dp_shard * o.tp));
  for (std::uint32_t i = 0; i < model.tensors.size(); ++i) {
    const ModelTensor& t = model.tensors[i];
    const int stage = PipelineStage(t, stage_of_layer, o.pp);
    for (int tp_rank = 0; tp_rank < o.tp; ++tp_rank) {
      SW_ASSIGN_OR_RETURN(const LocalShard tp_shard, TensorParallelShard(model, t, o.tp, tp_rank, false, 1));
      auto add = [&](int s, const Box& box) {
        classes[static_cast<std::size_t>((stage * o.dp_shard + s) * o.tp + tp_rank)].push_back({i, LocalShard(box)});
      };
      // FSDP: dim 0 of `box` chunked over `ranks` ranks; rank f of them is dp_shard rank s(f).
      auto fsdp = [&](const Box& box, int ranks, auto&& shard_rank) {
        if (box.shape.empty()) {  // a 0-d tensor lives on the first rank
          add(shard_rank(0), box);
          return;
        }
        const auto chunks = ChunkRanges(box.shape[0], ranks);
        for (int f = 0; f < ranks; ++f) {
          Box piece = box;
          piece.offset[0] += chunks[static_cast<std::size_t>(f)].first;
          piece.shape[0] = chunks[static_cast<std::size_t>(f)].second - chunks[static_cast<std::size_t>(f)].first;
          if (piece.numel() > 0) add(shard_rank(f), piece);
        }
      };
      if (t.expert >= 0 && o.ep > 1) {
        // The expert's EP rank; its FSDP group is the dp_shard ranks f * ep + owner.
        const int owner = static_cast<int>(t.expert * o.ep / experts);
        auto shard_rank = [&](int f) { return f * o.ep + owner; };
        if (local_experts >= fsdp_in_ep) {  // whole experts: chunk the expert list
          const std::int64_t local_index = t.expert - owner * local_experts;
          const auto chunks = ChunkRanges(local_experts, fsdp_in_ep);
          for (int f = 0; f < fsdp_in_ep; ++f) {
            if (local_index >= chunks[static_cast<std::size_t>(f)].first &&
                local_index < chunks[static_cast<std::size_t>(f)].second) {
              add(shard_rank(f), tp_shard.box);
            }
          }
        } else {  // fewer experts than FSDP ranks: each expert on its dim 0
          fsdp(tp_shard.box, fsdp_in_ep, shard_rank);
        }
      } else {
        fsdp(tp_shard.box, o.dp_shard, [](int f) { return f; });
      }
    }
  }
  std::vector<std::uint32_t> class_of_rank(static_cast<std::size_t>(world));
  for (int stage = 0; stage < o.pp; ++stage) {
    for (int r = 0; r < o.dp_replicate; ++r) {
      for (int s = 0; s < o.dp_shard; ++s) {
        for (int tp_rank = 0; tp_rank < o.tp; ++tp_rank) {
          class_of_rank[static_cast<std::size_t>(((stage * o.dp_replicate + r) * o.dp_shard + s) * o.tp + tp_rank)] =
              static_cast<std::uint32_t>((stage * o.dp_shard + s) * o.tp + tp_rank);
        }
      }
    }
  }
  std::string description =
      o.dp_replicate > 1 ? fmt::format("hsdp={}x{}", o.dp_replicate, o.dp_shard) : fmt::format("fsdp={}", o.dp_shard);
  if (o.tp > 1) description += fmt::format(",tp={}", o.tp);
  if (o.ep > 1) description += fmt::format(",ep={}", o.ep);
  if (o.pp > 1) description = fmt::format("pp={},", o.pp) + description;
  return Layout::FromRankClasses(std::move(description), Specs(model), std::move(classes), std::move(class_of_rank));
}

Result<Layout> MakeFsdpLayoutForModel(const ModelDescription& model, int num_ranks) {
  return MakeTrainerLayout(model, TrainerLayoutOptions{.dp_shard = num_ranks});
}

Result<Layout> MakeTpLayoutForModel(const ModelDescription& model, int tp, int replicas) {
  return MakeEngineLayout(model, EngineLayoutOptions{.tp = tp, .dp = replicas});
}

}  // namespace shardwire
