// Layout: which slice of which tensor every rank of a job holds, and where in the
// rank's buffer the slice lives.
//
// Each rank owns one contiguous buffer (on a real cluster, device memory; here host
// memory registered with the transport as one region). Its shards are placed in
// the layout's tensor order, each as a dense row-major box, each starting at a
// multiple of `alignment` bytes. One region per rank keeps the transport metadata
// proportional to ranks, not tensors.
//
// Thread-safety: immutable after construction; safe to share between threads.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "shardwire/box.h"
#include "shardwire/status.h"
#include "shardwire/tensor_spec.h"

namespace shardwire {

/// What a rank holds of one tensor, as input to Layout::FromShards.
struct LocalShard {
  LocalShard(Box b) : box(std::move(b)) {}  // NOLINT(google-explicit-constructor): a box is a shard
  LocalShard(Box b, std::uint64_t reserved, std::uint32_t partial)
      : box(std::move(b)), reserved_bytes(reserved), partial_group(partial) {}
  Box box;
  /// Bytes to reserve in the buffer when more than the box needs (e.g. vocabulary padding
  /// rows that are never sent); 0 = exactly the box.
  std::uint64_t reserved_bytes = 0;
  /// 0: the shard holds the tensor's values. k > 0: it holds an addend (DTensor
  /// Partial(sum)); the shards of one tensor with the same box and the same k sum to
  /// the values.
  std::uint32_t partial_group = 0;
};

/// One placed shard: tensor index (into Layout::tensors()), the box it covers, the byte
/// offset of its first element in the owning rank's buffer, and its partial group.
struct ShardRef {
  std::uint32_t tensor = 0;
  Box box;
  std::uint64_t byte_offset = 0;
  std::uint32_t partial_group = 0;  ///< see LocalShard::partial_group
};

/// How shards are placed in rank buffers.
struct LayoutOptions {
  /// Every shard (or fused group) starts at a multiple of this many bytes (power of two).
  std::uint64_t alignment = 64;
  /// Groups of tensor indices placed back to back, in the given order, in every rank's
  /// buffer (no alignment gap inside a group). This is how fused parameters are held:
  /// vLLM's qkv_proj = cat([q, k, v], dim=0) of the rank's shards is byte for byte the
  /// concatenation of the parts' dense row-major shards. Each tensor may appear in at
  /// most one group; a group sits where its first part would.
  std::vector<std::vector<std::uint32_t>> fused_groups;
};

/// All shards of one rank, in tensor order, and the buffer size they need (bytes).
struct RankShards {
  std::vector<ShardRef> shards;
  std::uint64_t buffer_bytes = 0;

  /// The shard of `tensor` on this rank, or nullptr when the rank holds none of it.
  const ShardRef* Find(std::uint32_t tensor) const;
};

/// One shard of a rank class, as input to Layout::FromRankClasses.
struct ShardEntry {
  std::uint32_t tensor = 0;
  LocalShard shard;
};

/// Which shard of which tensor every rank holds, and at which byte offset of the rank's
/// buffer (see the file comment). A value type; immutable once built.
class Layout {
 public:
  /// Builds a layout whose ranks fall into *rank classes*: ranks of one class hold
  /// identical shards at identical offsets (engine replicas, HSDP replica groups), so
  /// the shards are stored once per class — a trillion-parameter MoE on hundreds of
  /// ranks stays in memory. class_shards[c] lists what class c holds (any order; at most
  /// one entry per tensor); class_of_rank[r] is rank r's class. Errors: those of
  /// FromShards, plus kInvalidArgument for a class index out of range or a class with no rank.
  static Result<Layout> FromRankClasses(std::string description, std::vector<TensorSpec> tensors,
                                        std::vector<std::vector<ShardEntry>> class_shards,
                                        std::vector<std::uint32_t> class_of_rank, const LayoutOptions& options = {});

  /// Builds a layout from per-rank shards: shards[rank][tensor] is what rank holds of
  /// tensor; nullopt or an empty box means none of it. Places the shards in each rank's
  /// buffer (see LayoutOptions). Errors (kInvalidArgument): a box of the wrong rank or
  /// outside its tensor's shape, naming the rank and tensor; reserved_bytes smaller
  /// than the box; alignment not a power of two; a tensor in two fused groups; zero ranks;
  /// a tensor name listed twice (tensors are matched by name), naming both indices.
  static Result<Layout> FromShards(std::string description, std::vector<TensorSpec> tensors,
                                   const std::vector<std::vector<std::optional<LocalShard>>>& shards,
                                   const LayoutOptions& options = {});

  /// Human description, e.g. "fsdp=2" or "tp=2,dp=2".
  const std::string& description() const { return description_; }
  int world_size() const { return static_cast<int>(class_of_rank_.size()); }
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  /// Precondition: 0 <= rank < world_size().
  const RankShards& rank(int rank) const { return classes_[class_of_rank_[static_cast<std::size_t>(rank)]]; }
  /// Rank classes (see FromRankClasses): their shards, and the ranks of each (ascending).
  /// Precondition for rank_class / ranks_of_class: c < num_rank_classes().
  std::size_t num_rank_classes() const { return classes_.size(); }
  const RankShards& rank_class(std::size_t c) const { return classes_[c]; }
  const std::vector<std::uint32_t>& ranks_of_class(std::size_t c) const { return ranks_of_class_[c]; }
  /// Index of the tensor named `name`, or kNotFound.
  Result<std::uint32_t> TensorIndex(const std::string& name) const;

  /// The same layout restricted to the tensors `keep` (indices into tensors(), any order;
  /// the result lists them in ascending index order): every kept shard stays at its byte
  /// offset and every rank keeps its buffer_bytes, so plans between subsets address the
  /// real buffers. Used to plan part of a model's tensors separately (e.g. the tensors a
  /// push converts and those it moves unchanged). Errors: kInvalidArgument for an index out
  /// of range or listed twice.
  Result<Layout> Subset(const std::vector<std::uint32_t>& keep) const;

 private:
  std::string description_;
  std::vector<TensorSpec> tensors_;
  std::vector<RankShards> classes_;
  std::vector<std::uint32_t> class_of_rank_;
  std::vector<std::vector<std::uint32_t>> ranks_of_class_;
};

/// torch.chunk semantics: the [begin, end) ranges when `extent` elements are split
/// into `parts` chunks of ceil(extent/parts); trailing parts may be empty (begin==end).
/// Source: torch.chunk documentation ("last chunk will be smaller"; fewer chunks may
/// be returned), which FSDP2 uses for dim-0 sharding.
std::vector<std::pair<std::int64_t, std::int64_t>> ChunkRanges(std::int64_t extent, int parts);

/// FSDP (FSDP2 / fully_shard): every tensor sharded on dim 0 across `num_ranks`
/// ranks with torch.chunk splits; 0-d tensors are held whole by rank 0.
/// Errors (kInvalidArgument): num_ranks < 1; a tensor of more than kMaxTensorDims dimensions.
Result<Layout> MakeFsdpLayout(std::vector<TensorSpec> tensors, int num_ranks);

/// Tensor parallelism as inference engines hold it: tensor i is split evenly on
/// dimension shard_dims[i] across `tp` ranks (-1 = replicated on every TP rank),
/// and the whole TP group is repeated `replicas` times (rank = replica * tp + tp_rank).
/// Errors (kInvalidArgument): tp or replicas < 1; a sharded dimension not divisible
/// by tp (names the tensor, dimension and sizes); shard_dims of the wrong length; a tensor of
/// more than kMaxTensorDims dimensions.
Result<Layout> MakeTpLayout(std::vector<TensorSpec> tensors, const std::vector<int>& shard_dims, int tp, int replicas);

}  // namespace shardwire
