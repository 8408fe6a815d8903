#include "shardwire/device_mesh.h"

#include <limits>
#include <set>

#include <fmt/format.h>

#include "shardwire/layout.h"

namespace shardwire {

Result<DeviceMesh> DeviceMesh::Create(std::vector<MeshDim> dims) {
  if (dims.empty()) return InvalidArgument("a device mesh needs at least one dimension");
  std::set<std::string> names;
  DeviceMesh mesh;
  for (const MeshDim& d : dims) {
    if (d.name.empty()) return InvalidArgument("a device mesh dimension has an empty name");
    if (!names.insert(d.name).second) return InvalidArgument(fmt::format("mesh dimension {} appears twice", d.name));
    if (d.size < 1) return InvalidArgument(fmt::format("mesh dimension {} has size {}", d.name, d.size));
    // Ranks are ints: a product past INT_MAX (65536 x 65537) was signed overflow and wrapped.
    if (mesh.size_ > std::numeric_limits<int>::max() / d.size) {
      return InvalidArgument(fmt::format("device mesh of more than {} ranks (at dimension {} of size {})",
                                         std::numeric_limits<int>::max(), d.name, d.size));
    }
    mesh.size_ *= d.size;
  }
  mesh.dims_ = std::move(dims);
  return mesh;
}

std::vector<int> DeviceMesh::Coordinates(int rank) const {
  std::vector<int> coords(dims_.size());
  for (std::size_t i = dims_.size(); i-- > 0;) {
    coords[i] = rank % dims_[i].size;
    rank /= dims_[i].size;
  }
  return coords;
}

Result<int> DeviceMesh::DimIndex(std::string_view name) const {
  for (std::size_t i = 0; i < dims_.size(); ++i) {
    if (dims_[i].name == name) return static_cast<int>(i);
  }
  return NotFound(fmt::format("mesh {} has no dimension {}", ToString(), name));
}

std::string DeviceMesh::ToString() const {
  std::string s;
  for (const MeshDim& d : dims_) s += fmt::format("{}{}={}", s.empty() ? "" : ",", d.name, d.size);
  return s;
}

std::string Placement::ToString() const {
  switch (kind) {
    case Kind::kShard:
      return fmt::format("Shard({})", dim);
    case Kind::kReplicate:
      return "Replicate()";
    case Kind::kPartial:
      return "Partial(sum)";
  }
  return "?";
}

Result<std::optional<Box>> LocalBox(const std::vector<std::int64_t>& global_shape, const DeviceMesh& mesh,
                                    std::span<const Placement> placements, int rank) {
  if (placements.size() != mesh.dims().size()) {
    return InvalidArgument(fmt::format("{} placements given for mesh {} of {} dimensions", placements.size(),
                                       mesh.ToString(), mesh.dims().size()));
  }
  if (global_shape.size() > kMaxBoxDims) {
    return InvalidArgument(
        fmt::format("a tensor of {} dimensions exceeds the {} a layout supports", global_shape.size(), kMaxBoxDims));
  }
  Box box = WholeBox(global_shape);
  const std::vector<int> coords = mesh.Coordinates(rank);
  for (std::size_t i = 0; i < placements.size(); ++i) {
    const Placement& p = placements[i];
    if (p.kind != Placement::Kind::kShard) continue;
    if (p.dim < 0 || static_cast<std::size_t>(p.dim) >= global_shape.size()) {
      return InvalidArgument(fmt::format("{} on mesh dimension {} does not fit a tensor of shape {}", p.ToString(),
                                         mesh.dims()[i].name, ShapeToString(global_shape)));
    }
    const auto d = static_cast<std::size_t>(p.dim);
    const auto chunks = ChunkRanges(box.shape[d], mesh.dims()[i].size);
    const auto [begin, end] = chunks[static_cast<std::size_t>(coords[i])];
    box.offset[d] += begin;
    box.shape[d] = end - begin;
  }
  if (box.numel() == 0 && !global_shape.empty()) return std::optional<Box>();
  return std::optional<Box>(box);
}

Result<Layout> MakeDTensorLayout(std::string description, std::vector<TensorSpec> tensors, const DeviceMesh& mesh,
                                 const std::vector<std::vector<Placement>>& placements, const LayoutOptions& options) {
  if (placements.size() != tensors.size()) {
    return InvalidArgument(fmt::format("{} placement lists for {} tensors", placements.size(), tensors.size()));
  }
  std::vector<std::vector<std::optional<LocalShard>>> shards(static_cast<std::size_t>(mesh.size()),
                                                             std::vector<std::optional<LocalShard>>(tensors.size()));
  for (std::size_t t = 0; t < tensors.size(); ++t) {
    bool partial = false;
    for (const Placement& p : placements[t]) partial |= p.kind == Placement::Kind::kPartial;
    for (int r = 0; r < mesh.size(); ++r) {
      auto box = LocalBox(tensors[t].shape, mesh, placements[t], r);
      if (!box.ok()) return box.status().WithContext(tensors[t].name);
      if (!box->has_value()) continue;
      std::uint32_t group = 0;
      if (partial) {
        // Ranks that differ only along Partial dimensions sum to one value: number the
        // group by the coordinates on the other dimensions.
        const std::vector<int> coords = mesh.Coordinates(r);
        std::uint32_t id = 0;
        for (std::size_t i = 0; i < coords.size(); ++i) {
          id = id * static_cast<std::uint32_t>(mesh.dims()[i].size) +
               (placements[t][i].kind == Placement::Kind::kPartial ? 0 : static_cast<std::uint32_t>(coords[i]));
        }
        group = id + 1;
      }
      shards[static_cast<std::size_t>(r)][t] = LocalShard(**box, 0, group);
    }
  }
  return Layout::FromShards(std::move(description), std::move(tensors), shards, options);
}

}  // namespace shardwire
