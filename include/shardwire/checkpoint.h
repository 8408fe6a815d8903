// A checkpoint: the set of safetensors files that together hold one model's tensors.
//
// Layouts accepted (HF transformers conventions, `save_pretrained` / `from_pretrained`):
//   * one `.safetensors` file holding every tensor;
//   * a sharded set described by an index file `<prefix>.safetensors.index.json`
//     (usually `model.safetensors.index.json`): {"metadata": {"total_size": <bytes>},
//     "weight_map": {"<tensor name>": "<shard file name>", ...}}. Shard names are relative
//     to the index's directory. `metadata` and `metadata.total_size` are optional; when
//     present, total_size must equal the summed data bytes of the tensors the index maps.
//
// Thread-safety: immutable after Open; const methods may be called concurrently.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "shardwire/safetensors.h"
#include "shardwire/status.h"
#include "shardwire/tensor_spec.h"

namespace shardwire {

/// An opened checkpoint: every shard mapped read-only, every tensor name resolved to its
/// shard. Move-only (owns the mappings through SafetensorsFile).
class Checkpoint {
 public:
  /// Opens `path`, which is one of:
  ///  * a `.safetensors` file;
  ///  * an index file (name ending in `.index.json`);
  ///  * a directory: its single `*.safetensors.index.json` if it has one (preferred even
  ///    when a single-file copy sits beside it), else its single `*.safetensors` file.
  /// Errors: kNotFound if `path` does not exist, if a directory holds no candidate, or if
  /// the index names a missing shard file (names index and shard) or a tensor the shard
  /// lacks (names tensor and shard); kInvalidArgument if a directory holds several index
  /// files or, without an index, several .safetensors files (all are listed);
  /// kCorruptData if the index is not JSON / has no `weight_map` object / an empty one / a non-string
  /// entry / a shard name that leaves the index's folder (empty, absolute, a ".."
  /// component: the index is untrusted and must not make us open other files), if a shard holds a tensor the index does
  /// not map to it (names tensor and shard; also catches a tensor present in two shards), or if total_size disagrees
  /// (names both numbers); any SafetensorsFile::Open error of a shard.
  static Result<Checkpoint> Open(const std::string& path);

  /// Takes over the shards' mappings; views obtained before the move stay valid.
  Checkpoint(Checkpoint&&) noexcept = default;
  /// Releases this checkpoint's mappings, then takes over the other's.
  Checkpoint& operator=(Checkpoint&&) noexcept = default;
  Checkpoint(const Checkpoint&) = delete;             ///< not copyable
  Checkpoint& operator=(const Checkpoint&) = delete;  ///< not copyable
  /// Unmaps every shard; TensorViews from Get become dangling.
  ~Checkpoint() = default;

  /// Every tensor of the checkpoint, sorted by name (deterministic across shardings).
  std::vector<TensorSpec> tensors() const;

  /// The tensor `name` with its bytes (a view into its shard's mapping, valid while this
  /// Checkpoint lives). kNotFound naming the tensor and the checkpoint path if absent.
  Result<TensorView> Get(std::string_view name) const;

  /// True when some shard holds `name`.
  bool Contains(std::string_view name) const;

  /// Sum of nbytes() over all tensors (bytes).
  std::uint64_t total_bytes() const;

  /// The opened shard files: one for a single-file checkpoint; for an index, the distinct
  /// shard files sorted by file name.
  const std::vector<SafetensorsFile>& files() const { return files_; }

  /// The resolved file that was opened: the `.safetensors` file or the index file.
  const std::string& path() const { return path_; }

  /// The model config beside the checkpoint: `config.json` in the checkpoint's directory
  /// if present; else the one file there whose name ends in `config.json` (e.g.
  /// `tiny_llama_config.json`), ignoring generation_config.json, tokenizer_config.json and
  /// preprocessor_config.json; else "" (none, or ambiguous).
  const std::string& config_path() const { return config_path_; }

 private:
  Checkpoint() = default;

  std::string path_;
  std::string config_path_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::size_t, std::less<>> shard_of_;  // tensor name -> files_ index
};

}  // namespace shardwire
