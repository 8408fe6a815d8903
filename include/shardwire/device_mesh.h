// Device meshes and placements, with PyTorch DTensor's semantics.
//
// Source of the semantics: torch.distributed.tensor (DTensor) — DeviceMesh,
// Shard(dim) / Replicate() / Partial("sum") placements, and
// torch/distributed/tensor/_utils.py compute_local_shape_and_global_offset:
//  * a mesh of sizes [s0, s1, ...] numbers its ranks row-major (the last mesh
//    dimension varies fastest), as DeviceMesh(arange(n).reshape(sizes)) does;
//  * Shard(d) on mesh dimension i splits tensor dimension d into s_i chunks with
//    torch.chunk semantics (chunk size ceil(n / s_i), trailing chunks may be smaller or
//    empty) and the rank at coordinate c_i keeps chunk c_i;
//  * several mesh dimensions sharding the same tensor dimension apply in mesh order:
//    each splits the range left by the previous ones;
//  * Replicate(): every rank along the dimension holds the same values;
//  * Partial(sum): every rank along the dimension holds a same-shaped addend; the
//    tensor's value is the elementwise sum over that dimension.
//
// Thread-safety: value types and pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/box.h"
#include "shardwire/layout.h"
#include "shardwire/status.h"

namespace shardwire {

/// One named mesh dimension, e.g. {"dp_shard", 8}.
struct MeshDim {
  std::string name;
  int size = 1;  ///< ranks along this dimension (>= 1)
};

class DeviceMesh {
 public:
  /// Errors (kInvalidArgument): no dimensions, a size < 1, an empty or repeated name, more
  /// than INT_MAX ranks in all.
  static Result<DeviceMesh> Create(std::vector<MeshDim> dims);

  const std::vector<MeshDim>& dims() const { return dims_; }
  /// Number of ranks (product of the sizes).
  int size() const { return size_; }
  /// Mesh coordinates of `rank` (row-major). Precondition: 0 <= rank < size().
  std::vector<int> Coordinates(int rank) const;
  /// Index of the dimension called `name`, or kNotFound.
  Result<int> DimIndex(std::string_view name) const;
  /// "dp_shard=8,tp=2".
  std::string ToString() const;

 private:
  std::vector<MeshDim> dims_;
  int size_ = 1;
};

/// Where a tensor lives along one mesh dimension.
struct Placement {
  enum class Kind : std::uint8_t { kShard, kReplicate, kPartial };
  Kind kind = Kind::kReplicate;
  int dim = 0;  ///< tensor dimension, for kShard

  static Placement Shard(int dim) { return {Kind::kShard, dim}; }
  static Placement Replicate() { return {Kind::kReplicate, 0}; }
  /// Partial with reduce op "sum" (the only reduce op Shardwire plans).
  static Placement Partial() { return {Kind::kPartial, 0}; }
  bool operator==(const Placement&) const = default;
  /// "Shard(0)", "Replicate()", "Partial(sum)".
  std::string ToString() const;
};

/// The box of a tensor of `global_shape` held by `rank` under `placements` (one per
/// mesh dimension), applying Shard placements in mesh order; nullopt when the rank's
/// chunk is empty. Errors (kInvalidArgument, naming the placement): placements.size()
/// differs from the number of mesh dimensions; Shard(d) with d outside the tensor's
/// rank; a tensor of more than kMaxBoxDims dimensions.
Result<std::optional<Box>> LocalBox(const std::vector<std::int64_t>& global_shape, const DeviceMesh& mesh,
                                    std::span<const Placement> placements, int rank);

/// A layout in which tensor i is placed on `mesh` by placements[i] (one Placement per
/// mesh dimension), ranks numbered as the mesh numbers them. Ranks along a Partial
/// dimension hold addends: their shards get a partial_group that is equal exactly for
/// the ranks whose coordinates differ only on Partial dimensions.
/// Errors: those of LocalBox, naming the tensor; placements.size() != tensors.size().
Result<Layout> MakeDTensorLayout(std::string description, std::vector<TensorSpec> tensors, const DeviceMesh& mesh,
                                 const std::vector<std::vector<Placement>>& placements,
                                 const LayoutOptions& options = {});

}  // namespace shardwire
