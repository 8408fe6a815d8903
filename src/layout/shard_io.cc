#include "shardwire/shard_io.h"

#include <cstring>

#include <fmt/format.h>

namespace shardwire {

void CopyBoxFromTensor(const TensorSpec& spec, std::span<const std::byte> full, const Box& box,
                       std::span<std::byte> out) {
  const std::size_t esize = DTypeSize(spec.dtype);
  ForEachContiguousRun(box, WholeBox(spec.shape), box, [&](std::int64_t from, std::int64_t to, std::int64_t n) {
    std::memcpy(out.data() + static_cast<std::size_t>(to) * esize, full.data() + static_cast<std::size_t>(from) * esize,
                static_cast<std::size_t>(n) * esize);
  });
}

Status LoadShardsFromCheckpoint(const Checkpoint& checkpoint, const Layout& layout, int rank,
                                std::span<std::byte> buffer) {
  const RankShards& shards = layout.rank(rank);
  if (buffer.size() != shards.buffer_bytes) {
    return InvalidArgument(fmt::format("rank {} buffer holds {} bytes, layout {} needs {}", rank, buffer.size(),
                                       layout.description(), shards.buffer_bytes));
  }
  for (const ShardRef& shard : shards.shards) {
    const TensorSpec& spec = layout.tensors()[shard.tensor];
    SW_ASSIGN_OR_RETURN(const TensorView view, checkpoint.Get(spec.name));
    if (view.spec.shape != spec.shape || view.spec.dtype != spec.dtype) {
      return LayoutMismatch(fmt::format("checkpoint {} holds {}, layout {} expects {}", checkpoint.path(),
                                        ToString(view.spec), layout.description(), ToString(spec)));
    }
    const std::size_t bytes = static_cast<std::size_t>(shard.box.numel()) * DTypeSize(spec.dtype);
    CopyBoxFromTensor(spec, view.data, shard.box, buffer.subspan(shard.byte_offset, bytes));
  }
  return Status::Ok();
}

}  // namespace shardwire
